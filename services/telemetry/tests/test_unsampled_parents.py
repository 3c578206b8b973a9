"""The unsampled-parent shortcut against the SDK it stands in for: same trace, same answer."""

from __future__ import annotations

import random

import pytest
from opentelemetry import propagate, trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from servescope.telemetry.middleware import _GETTER
from servescope.telemetry.tracing import UnsampledParents

PROVIDER = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))


def _sdk_span(headers: list[tuple[bytes, bytes]]) -> trace.Span:
    parent = propagate.extract(headers, getter=_GETTER)
    return PROVIDER.get_tracer("test").start_span("POST", context=parent)


def _traceparent(rng: random.Random) -> bytes:
    """Mostly well-formed unsampled traceparents, and every way to be otherwise."""
    trace_id = format(0 if rng.random() < 0.05 else rng.getrandbits(128), "032x")
    span_id = format(0 if rng.random() < 0.05 else rng.getrandbits(64), "016x")
    flags = rng.choice(["00", "02"]) if rng.random() < 0.6 else rng.choice(["01", "03", "fe", "ff"])
    version = "00" if rng.random() < 0.8 else rng.choice(["01", "ff", "0g"])
    value = f"{version}-{trace_id}-{span_id}-{flags}"
    mangle = rng.randrange(12)
    if mangle == 0:
        value = value.upper()
    elif mangle == 1:
        value = value[:-1]
    elif mangle == 2:
        value = value.replace("-", "_", 1)
    return value.encode()


def test_every_shortcut_answer_is_the_sdks_answer() -> None:
    shortcut = UnsampledParents(enabled=True)
    rng = random.Random(20261201)
    taken = 0
    for _ in range(3000):
        headers = [(b"host", b"x"), (b"traceparent", _traceparent(rng))]
        if rng.random() < 0.1:
            headers.append(rng.choice([(b"tracestate", b"a=b"), (b"baggage", b"k=v")]))
        fast = shortcut.span(headers)
        if fast is None:
            continue  # the SDK decides, as before
        taken += 1
        sdk = _sdk_span(headers)
        assert not sdk.is_recording() and not fast.is_recording()
        fast_context, sdk_context = fast.get_span_context(), sdk.get_span_context()
        assert fast_context.trace_id == sdk_context.trace_id
        assert fast_context.trace_flags == sdk_context.trace_flags  # 00, or 02 (random id)
        assert not fast_context.trace_flags.sampled
        assert fast_context.is_valid and not fast_context.is_remote
        assert fast_context.span_id != int(headers[1][1].split(b"-")[2], 16)  # its own span
    assert taken > 600  # the common case: a well-formed unsampled parent


@pytest.mark.parametrize(
    "headers",
    [
        [],  # a root: the edge's sampler decides
        [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")],
        [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            (b"baggage", b"user=1"),  # baggage must reach the context
        ],
        [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            (b"traceparent", b"00-1af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        ],
    ],
)
def test_what_the_shortcut_leaves_to_the_sdk(headers: list[tuple[bytes, bytes]]) -> None:
    assert UnsampledParents(enabled=True).span(headers) is None


def test_it_is_off_when_the_sampler_would_record_an_unsampled_parent(monkeypatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider(sampler=ALWAYS_ON))
    assert not UnsampledParents.for_current_provider().enabled
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: PROVIDER)
    assert UnsampledParents.for_current_provider().enabled


def test_it_is_off_with_propagators_other_than_the_defaults(monkeypatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: PROVIDER)

    class B3Like(TraceContextTextMapPropagator):
        @property
        def fields(self) -> set[str]:
            return {"b3"}

    monkeypatch.setattr(propagate, "get_global_textmap", lambda: CompositePropagator([B3Like()]))
    assert not UnsampledParents.for_current_provider().enabled


def test_the_edges_own_unsampled_calls_take_the_shortcut() -> None:
    """What the edge really sends: the SDK's root spans, injected by the default propagators
    (it sets the W3C random-trace-id flag, so an unsampled call says 02, not 00)."""
    shortcut = UnsampledParents(enabled=True)
    tracer = PROVIDER.get_tracer("edge")
    taken = unsampled = 0
    for _ in range(500):
        root = tracer.start_span("POST /v1/predict")
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(root))
        headers = [(name.encode(), value.encode()) for name, value in carrier.items()]
        fast = shortcut.span(headers)
        if not root.get_span_context().trace_flags.sampled:
            unsampled += 1
            assert fast is not None, carrier
            assert fast.get_span_context().trace_id == root.get_span_context().trace_id
            taken += 1
        else:
            assert fast is None
    assert taken == unsampled > 400  # nine in ten at the 10% ratio
