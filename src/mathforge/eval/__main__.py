import sys

from mathforge.cli import run_main
from mathforge.eval.run import main

sys.exit(run_main(main, sys.argv[1:], "mathforge eval"))
