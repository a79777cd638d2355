"""The command line, `gpperf-torch tune | train | eval | report | select | inspect | table`.

`main` builds the parser from the subcommand modules beside it, each of which parses its arguments (`argtypes`)
and calls the public functions of one room: tuning (`tune`), the predictor (`train`, `report`), selection
(`select`, `table`) and the kernels (`inspect`).

Nothing in the package imports this room: it is the top of the data flow.
"""
