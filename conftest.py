"""pytest configuration shared by the unit tests and nbval over notebooks/.

Progress bars would write rates into compared outputs, so they are off under test
(the notebook kernels nbval starts inherit this environment). The kernels keep their inline
matplotlib backend: MPLBACKEND must not be set here.
"""
import os

os.environ["COURSE_PROGRESS"] = "0"
