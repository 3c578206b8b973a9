"""`servescope lab ...`: what each subcommand does (commands/lab.py only parses arguments).

Every operation returns the exit code and prints through `say`: 0 done (or passed), 1 the
check failed or something stops the command (the message says what to do).
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from servescope.cli.labs.context import CheckContext, MissingTool
from servescope.cli.labs.model import STAGES, Lab, LabError, discover_leniently, find
from servescope.cli.labs.processes import (
    LabStack,
    Ports,
    alive_processes,
    stop_processes,
)
from servescope.cli.labs.store import Store
from servescope.cli.labs.workspace import (
    backup_repo_files,
    copy_solution,
    has_backup,
    prepare_workspace,
    repo_edits,
    restore_repo_files,
    restore_workspace,
    workspace_edits,
)
from servescope.cli.output import say as default_say

# Kept across a restart: what the services report to, not the services themselves.
OBSERVABILITY = ("prometheus", "alertmanager", "responder")


def minutes(seconds: float) -> str:
    if seconds < 60:
        return "<1 min"
    total = round(seconds / 60)
    return f"{total} min" if total < 60 else f"{total // 60} h {total % 60:02d} min"


def _clock(seconds: float) -> str:
    """A drill's time to diagnosis, to the second: 4m07s, 1h02m03s."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


def _load_module(path: Path) -> ModuleType:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(f"servescope_lab_{path.stem}_{digest}", path)
    if spec is None or spec.loader is None:
        raise LabError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function(path: Path, name: str) -> Callable[[CheckContext], None]:
    function = getattr(_load_module(path), name, None)
    if not callable(function):
        raise LabError(f"{path} has no function {name}(ctx)")
    return function  # type: ignore[no-any-return]


@dataclass
class Runner:
    root: Path
    run_dir: Path
    port_base: int | None = None
    say: Callable[[str], None] = default_say
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.store = Store(self.run_dir)

    # --- shared -----------------------------------------------------------------------------

    def lab(self, lab_id: str) -> Lab:
        return find(self.root, lab_id)

    def _running(self, lab: Lab | None = None) -> dict[str, Any] | None:
        """The running record (of `lab`, when given) if any of its processes still runs."""
        record = self.store.running()
        if record is None:
            return None
        if not alive_processes(record):
            self.store.clear_running()
            return None
        if lab is not None and record["lab"] != lab.id:
            return None
        return record

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def context(self, lab: Lab, record: dict[str, Any] | None = None) -> CheckContext:
        record = record if record is not None else self._running(lab)
        progress = self.store.lab_progress(lab.id)

        def save_state(state: dict[str, Any]) -> None:
            self.store.save_state(lab.id, state)

        def record_answer(text: str) -> None:  # the reference solution's answer
            self.store.update_progress(
                lab.id, answer=text, answered_at=time.time(), answer_by="solution"
            )

        return CheckContext(
            lab=lab,
            root=self.root,
            workspace=lab.workspace,
            run_dir=self.run_dir,
            urls=dict(record["urls"]) if record else {},
            trace_dir=Path(record["trace_dir"]) if record else self.run_dir / "traces",
            log_dir=Path(record["log_dir"]) if record else self.run_dir,
            answer=progress.get("answer"),
            state=self.store.state(lab.id),
            started_at=float(record["started_at"]) if record else None,
            on_restart=lambda: self._bring_up(lab, restart_only=True),
            on_answer=record_answer,
            on_save_state=save_state,
        )

    # --- list and status --------------------------------------------------------------------

    def _status_text(self, lab: Lab, now: float) -> str:
        entry = self.store.lab_progress(lab.id)
        if entry.get("passed_at"):
            took = minutes(float(entry["passed_at"]) - float(entry.get("started_at", 0)))
            if entry.get("diagnosis_seconds") is not None:  # a timed drill
                took = f"diagnosed in {_clock(float(entry['diagnosis_seconds']))}"
            return f"passed ({took}{', solved' if entry.get('solved') else ''})"
        if lab.timed and entry.get("started_at"):
            since = float(entry.get("timed_from", entry["started_at"]))
            return f"started, timed ({_clock(now - since)} on the clock)"
        if entry.get("started_at"):
            return f"started ({minutes(now - float(entry['started_at']))} ago)"
        return "not started"

    def list_labs(self) -> int:
        labs, problems = discover_leniently(self.root)
        for lab_id, problem in problems.items():
            self.say(f"warning: {lab_id} is not a valid lab: {problem}")
        if not labs:
            self.say(f"no labs under {self.root / 'labs'}")
            return 0
        now = time.time()
        width = max(len(lab.id) for lab in labs)
        title_width = min(max(len(lab.title) for lab in labs), 56)
        for stage in STAGES:
            staged = [lab for lab in labs if lab.stage == stage]
            if not staged:
                continue
            self.say(stage)
            for lab in staged:
                title = (
                    lab.title
                    if len(lab.title) <= title_width
                    else lab.title[: title_width - 1] + "…"
                )
                self.say(
                    f"  {lab.id:<{width}}  {title:<{title_width}}  {lab.minutes:>3} min  "
                    f"{self._status_text(lab, now)}"
                )
        passed = sum(1 for lab in labs if self.store.lab_progress(lab.id).get("passed_at"))
        self.say(f"{passed} of {len(labs)} passed. Start one: servescope lab start {labs[0].id}")
        return 0

    def status(self) -> int:
        now = time.time()
        record = self._running()
        if record:
            self.say(f"running: {record['lab']} (stack up {minutes(now - record['started_at'])})")
            for entry in record["processes"]:
                self.say(f"  {entry['name']:<13} pid {entry['pid']:<8} {entry['log']}")
            for name, url in record["urls"].items():
                self.say(f"  {name:<13} {url}")
        else:
            self.say("no lab is running")
        progress = self.store.progress()
        labs, _ = discover_leniently(self.root)
        started = [lab for lab in labs if progress.get(lab.id, {}).get("started_at")]
        if record:
            current = next((lab for lab in labs if lab.id == record["lab"]), None)
        else:
            current = max(
                started, key=lambda lab: progress[lab.id].get("last_started_at", 0), default=None
            )
        if current is not None:
            entry = progress.get(current.id, {})
            self.say(f"current lab: {current.id}: {current.title}")
            self.say(f"  status     {self._status_text(current, now)}")
            self.say(f"  hints      {entry.get('hints_shown', 0)} of {len(current.hints)} shown")
            if entry.get("last_check_at"):
                self.say(
                    f"  last check {minutes(now - entry['last_check_at'])} ago: "
                    f"{entry.get('last_check', '')}"
                )
            if entry.get("answer"):
                self.say(f"  answer     {entry['answer']}")
            self.say(f"  guide      {self._rel(current.readme)}")
        passed = sum(1 for lab in labs if progress.get(lab.id, {}).get("passed_at"))
        self.say(f"progress: {passed} of {len(labs)} labs passed, {len(started)} started")
        return 0

    # --- start, restart, stop -----------------------------------------------------------------

    def start(self, lab_id: str, force: bool = False) -> int:
        lab = self.lab(lab_id)
        other = self._running()
        if other and other["lab"] != lab.id and (lab.needs_services or lab.needs_prometheus):
            raise LabError(
                f"lab {other['lab']} is running on the same ports; stop it first: "
                f"servescope lab stop {other['lab']}"
            )
        for tool in lab.tools:
            if shutil.which(tool) is None:
                self.say(f"warning: this lab's checker needs `{tool}`, which is not installed")
        passed = {i for i, e in self.store.progress().items() if e.get("passed_at")}
        missing = [p for p in lab.prerequisites if p not in passed]
        if missing:
            self.say(f"note: this lab builds on {', '.join(missing)} (not passed yet)")
        written, kept = prepare_workspace(lab, force)
        if kept:
            self.say(
                f"kept your edits in {self._rel(lab.workspace)}/: {', '.join(kept)} "
                "(--force replaces them with the starter files)"
            )
        if written:
            self.say(f"workspace {self._rel(lab.workspace)}/: {', '.join(written)}")
        saved = backup_repo_files(self.root, self.store, lab)
        if saved:
            self.say(
                f"backed up the {saved} repository files this lab edits "
                f"(`servescope lab reset {lab.id}` restores them exactly)"
            )
        now = time.time()
        entry = self.store.lab_progress(lab.id)
        self.store.update_progress(
            lab.id, started_at=entry.get("started_at", now), last_started_at=now
        )
        if lab.needs_services or lab.needs_prometheus:
            self._bring_up(lab)
        if lab.timed and not self.store.lab_progress(lab.id).get("timed_from"):
            # The drill's clock starts once the broken state is in place, and runs until
            # the first passing check (or answer): the time to correct diagnosis.
            self.store.update_progress(lab.id, timed_from=time.time())
        self.say("")
        self.say(f"{lab.id}: {lab.title} (about {lab.minutes} min)")
        if lab.timed:
            self.say("  timed: the clock runs until your first passing check")
        self.say(f"  guide: {self._rel(lab.readme)}")
        step = lab.first_step()
        if step:
            self.say(f"  next:  {step.rstrip(':')} (the guide has the commands)")
        self.say(f"  check: servescope lab check {lab.id}")
        self.say(f"  stuck: servescope lab hint {lab.id}")
        return 0

    def _bring_up(self, lab: Lab, restart_only: bool = False) -> None:
        """Start (or restart) the lab's processes. A restart keeps Prometheus and Alertmanager
        and starts the services and traffic again with the current workspace settings."""
        record = self._running(lab)
        if restart_only and record is None:
            raise LabError(f"the lab is not running: servescope lab start {lab.id}")
        if record is not None:
            ports = Ports(**record["ports"])
            stop_processes(self.store, record, keep=lambda name: name in OBSERVABILITY)
            record["processes"] = alive_processes(record)  # a Prometheus that died restarts
            self.say(f"restarting {lab.id}'s services on the same ports ...")
        else:
            ports = Ports.choose(self.port_base)
        stack = LabStack(lab, self.root, self.store, ports)
        if record is None or not record["processes"]:
            record = stack.new_record()
        started = time.monotonic()
        try:
            # Prometheus starts beside the services: its first target discovery takes a few
            # seconds, which the services' own start-up covers.
            stack.launch_services(record)
            running = {p["name"] for p in record["processes"]}
            if lab.needs_prometheus and "prometheus" not in running:
                stack.launch_observability(record)
            notes = stack.wait_services()
            if lab.setup_script.is_file():
                _function(lab.setup_script, "setup")(self.context(lab, record))
            stack.apply_faults(lab.faults)
            stack.start_traffic(record)
            stack.wait_observability()
            stack.wait_for_data()
        except BaseException:
            stop_processes(self.store, record)
            raise
        self.say(f"up in {time.monotonic() - started:.1f} s (logs in {self._rel(self.run_dir)}/):")
        for name, url in record["urls"].items():
            self.say(f"  {name:<13}{url}")
        if lab.traffic:
            self.say(
                f"  {'traffic':<13}{lab.traffic.mix} at {lab.traffic.rate:g}/s "
                f"({self._rel(self.run_dir / 'loadgen.log')})"
            )
        for note in notes:
            self.say(f"  note: {note}")

    def restart(self, lab_id: str) -> int:
        lab = self.lab(lab_id)
        if self._running(lab) is None:
            return self.start(lab_id)
        self._bring_up(lab, restart_only=True)
        return 0

    def stop(self, lab_id: str | None) -> int:
        record = self._running()
        if record is None:
            self.say("no lab is running")
            return 0
        if lab_id is not None and record["lab"] != self.lab(lab_id).id:
            self.say(f"{lab_id} is not running ({record['lab']} is)")
            return 1
        stopped = stop_processes(self.store, record)
        self.say(f"stopped {record['lab']}: {', '.join(stopped) or 'nothing was running'}")
        return 0

    # --- check, hint, answer ------------------------------------------------------------------

    def check(self, lab_id: str) -> int:
        lab = self.lab(lab_id)
        ctx = self.context(lab)
        self.say(f"checking {lab.id}")
        if (lab.needs_services or lab.needs_prometheus) and not ctx.urls:
            ctx.fail(
                "the lab is running",
                f"start it (or start it again): servescope lab start {lab.id}",
            )
        else:
            self._run_checker(lab, ctx)
        for criterion in ctx.results:
            if criterion.ok:
                self.say(f"  ok    {criterion.name}")
            else:
                self.say(f"  FAIL  {criterion.name}")
                if criterion.hint:
                    self.say(f"        hint: {criterion.hint}")
        now = time.time()
        good = sum(c.ok for c in ctx.results)
        summary = f"{good} of {len(ctx.results)} criteria pass"
        entry = self.store.lab_progress(lab.id)
        changes: dict[str, Any] = {
            "checks": int(entry.get("checks", 0)) + 1,
            "last_check_at": now,
            "last_check": summary,
        }
        if ctx.passed:
            if not entry.get("passed_at"):
                changes["passed_at"] = now
                changes.setdefault("started_at", entry.get("started_at", now))
                if lab.timed:  # time to correct diagnosis, from `start` to the first pass
                    since = entry.get("timed_from", entry.get("started_at", now))
                    changes["diagnosis_seconds"] = round(now - float(since), 1)
            self.store.update_progress(lab.id, **changes)
            took = minutes(now - float(entry.get("started_at", now)))
            if lab.timed and changes.get("diagnosis_seconds") is not None:
                took = f"time to diagnosis {_clock(changes['diagnosis_seconds'])}"
            self.say(f"passed: {lab.id} ({summary}; {took} since you started)")
            upcoming = self._next(lab)
            if upcoming:
                self.say(f"next: servescope lab start {upcoming.id}   ({upcoming.title})")
            return 0
        self.store.update_progress(lab.id, **changes)
        self.say(f"{summary}. Fix what failed and check again: servescope lab check {lab.id}")
        return 1

    def _run_checker(self, lab: Lab, ctx: CheckContext) -> None:
        try:
            _function(lab.checker, "check")(ctx)
        except MissingTool as exc:
            ctx.fail("the tools the checker needs are installed", str(exc))
        except LabError as exc:
            ctx.fail("the lab's state can be read", str(exc))
        except Exception as exc:
            ctx.fail(
                "the checker ran to the end",
                f"{type(exc).__name__}: {exc} (if your files look right, this is a bug in "
                f"{self._rel(lab.checker)})",
            )
        if not ctx.results:
            ctx.fail("the checker reported its criteria", f"{self._rel(lab.checker)} reported none")

    def _next(self, lab: Lab) -> Lab | None:
        labs, _ = discover_leniently(self.root)
        progress = self.store.progress()
        after = labs[labs.index(next(x for x in labs if x.id == lab.id)) + 1 :]
        return next((x for x in after if not progress.get(x.id, {}).get("passed_at")), None)

    def hint(self, lab_id: str) -> int:
        lab = self.lab(lab_id)
        shown = int(self.store.lab_progress(lab.id).get("hints_shown", 0))
        index = min(shown, len(lab.hints) - 1)
        self.say(f"hint {index + 1} of {len(lab.hints)}: {lab.hints[index]}")
        if index == len(lab.hints) - 1:
            self.say(
                f"(that is the strongest hint; `servescope lab solve {lab.id}` applies the "
                "reference solution)"
            )
        self.store.update_progress(lab.id, hints_shown=min(shown + 1, len(lab.hints)))
        return 0

    def answer(self, lab_id: str, words: list[str]) -> int:
        lab = self.lab(lab_id)
        text = " ".join(words).strip()
        if not text:
            raise LabError(f"write your answer after the lab id: {lab.answer_prompt or ''}")
        if lab.answer_prompt is None:
            self.say(f"note: {lab.id} is graded by `servescope lab check`; recording anyway")
        self.store.update_progress(
            lab.id, answer=text, answered_at=time.time(), answer_by="learner"
        )
        self.say(f"answer recorded: {text}")
        return self.check(lab.id)

    # --- solve and reset ---------------------------------------------------------------------

    def solve(self, lab_id: str, force: bool = False) -> int:
        lab = self.lab(lab_id)
        record = self._running(lab)
        if (lab.needs_services or lab.needs_prometheus) and record is None:
            raise LabError(f"start the lab first: servescope lab start {lab.id}")
        if lab.repo_files and not has_backup(self.store, lab):
            raise LabError(
                f"start the lab first (it backs up what it edits): servescope lab start {lab.id}"
            )
        edits = workspace_edits(lab) if lab.workspace.is_dir() else []
        edits += repo_edits(self.root, self.store, lab)
        if self.store.lab_progress(lab.id).get("answer_by") == "learner":
            edits.append("your answer")
        if edits and not force:
            raise LabError(
                f"not overwriting your edits ({', '.join(edits)}). Keep working, or run "
                f"`servescope lab solve {lab.id} --force` to replace them with the reference "
                f"solution, or `servescope lab reset {lab.id}` to start over"
            )
        if not lab.workspace.is_dir():
            prepare_workspace(lab)
        written = copy_solution(lab)
        if written:
            self.say(
                f"reference files written to {self._rel(lab.workspace)}/: {', '.join(written)}"
            )
        ctx = self.context(lab, record)
        answer_file = lab.solution / "answer.txt"
        if answer_file.is_file():
            ctx.record_answer(answer_file.read_text().strip())
            self.say(f"reference answer recorded: {ctx.answer}")
        script = lab.solution / "solve.py"
        if script.is_file():
            _function(script, "solve")(ctx)
        self.store.update_progress(lab.id, solved=True, solved_at=time.time())
        self.say(f"reference solution applied. Check it: servescope lab check {lab.id}")
        return 0

    def reset(self, lab_id: str) -> int:
        lab = self.lab(lab_id)
        record = self._running(lab)
        if record is not None:
            stopped = stop_processes(self.store, record)
            self.say(f"stopped: {', '.join(stopped)}")
        restore_workspace(lab)
        self.say(f"{self._rel(lab.workspace)}/ is the starter again")
        restored = restore_repo_files(self.root, self.store, lab)
        if restored:
            self.say(f"restored as they were at start: {', '.join(restored)}")
        self.store.clear_progress(lab.id)
        self.store.clear_state(lab.id)
        self.say(f"progress cleared. Start again: servescope lab start {lab.id}")
        return 0
