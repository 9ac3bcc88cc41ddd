"""One module per --mode, each with `run(config, workdir, **the mode's own flags)`: the drivers that build an
`Experiment` and use the libraries below them. Nothing outside modes/ (but the command line) imports one."""
