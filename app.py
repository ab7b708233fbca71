"""Start the pneumo web app: ``python app.py [--host H] [--port P] [--model BUNDLE] [--workers N]``.

The same as ``pneumo serve``: the production server (waitress) on loopback,
port 5000, with the shipped model unless ``--model`` or ``$PNEUMO_MODEL`` says
otherwise. Open http://127.0.0.1:5000 in a browser.
"""

import sys
from pathlib import Path

try:
    from pneumo.cli import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))
    from pneumo.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
