import sys

from graph.report import main
from memory.cli import run_cli

sys.exit(run_cli(main))
