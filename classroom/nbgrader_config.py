"""nbgrader configuration for the course (nbgrader 0.9). `make nbgrader` copies it into build/nbgrader/,
the course directory, next to source/<chapter>/<chapter>.ipynb; run nbgrader from there:

    make nbgrader && cd build/nbgrader
    nbgrader generate_assignment 04_distillation      # release/04_distillation/: solutions stubbed
    # students submit into submitted/<student>/04_distillation/ (or use nbgrader's exchange)
    nbgrader autograde 04_distillation                # autograded/ and gradebook.db

Each exercise is a solution cell (1 point) followed by a locked, graded checker cell; the checkers
raise only while nbgrader executes the notebook ($NBGRADER_EXECUTION), so a learner's "Run All" in
JupyterLab still reaches the end of the chapter. See docs/instructor.md, "Grading with nbgrader".
"""
import os

c = get_config()  # noqa: F821 (nbgrader provides it)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))

# Grade in lab mode (one seed, short budgets): every checker runs the same, a chapter takes about a
# minute instead of several. Set COURSE_LAB_MODE=0 in the shell to grade with the full budgets.
os.environ.setdefault("COURSE_LAB_MODE", "1")
# nbgrader's default is 30 s per cell; in a full run the slowest cells (chapters 01 and 04) take
# about 100 s on a 2-core laptop, and a busy or slow machine several times that.
c.Execute.timeout = 900
c.Execute.interrupt_on_timeout = True

# The stub a student sees in place of a solution; the "# Hint:" lines above it stay in the release.
c.ClearSolutions.code_stub = {
    "python": "# YOUR CODE HERE (the # Hint: line above says where to start)\n"
              "raise NotImplementedError('your code here')"
}
