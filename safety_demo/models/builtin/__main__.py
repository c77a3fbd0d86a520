"""`python -m safety_demo.models.builtin --variant default|fast|all`: build the weights cache."""
import sys

from .assemble import main

sys.exit(main())
