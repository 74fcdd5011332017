"""``python -m course_lib <command>``: the course's commands (run, test, lab, ...) without make; see cli."""
import sys

from .cli import main

sys.exit(main())
