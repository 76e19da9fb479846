"""Each command's name, as its messages and --help print it. A module of its own with no imports, so that a
command can name itself and answer --help before torch and MLflow load (issue 17)."""

RUN = "python -m bench.run"
GRID = "python -m bench.grid"
TUNE = "python -m bench.tune"
EVALUATE = "python -m bench.evaluate"
REPORT = "python -m bench.report"
SNR = "python -m bench.snr"
