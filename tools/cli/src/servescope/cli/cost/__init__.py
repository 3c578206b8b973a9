"""`servescope cost`: measure what observing the fleet costs, with and without the cuts.

main.py is the command; run.py runs the measurements, observe.py reads the volumes,
prices.py prices them, project.py projects them to larger fleets, proof.py proves the cut run
still debuggable, report.py writes docs/cost.md, its picture and its JSON, picture.py draws
the cost dashboard before and after."""
