"""``pneumo bench``: how fast the product answers on this machine, measured in one run.

On generated X-ray-like images and one model bundle it measures, in order:

1. the bare forward pass of each engine (``engine.py``): one image, then the
   best throughput over a range of batch sizes -- the hardware's limit for
   this model, what everything else is compared with;
2. the pattern most pneumonia web apps use: ``model.predict`` for the score,
   then a second pass under ``GradientTape`` for Grad-CAM, per image;
3. the product itself, as a user meets it: a real ``pneumo serve`` subprocess
   (time from launch to a healthy answer, API requests with heatmap one after
   another, then N concurrent clients, its resident memory), the same with
   TensorFlow as the engine, and ``pneumo predict`` over a folder.

The figures are wall-clock times: they mean something only on an otherwise
idle machine, which is why the load average is printed with them. No test
asserts any of them; CI runs this with tiny counts to check that it works.

The package keeps one job per module: ``inputs`` (generated uploads),
``machine`` (what it ran on), ``server`` (``pneumo serve`` as a subprocess, and
its clients; the tests start the real server with it too), ``report`` (rows,
targets, rendering) and ``run`` (the measurements, in order).
"""

from .inputs import synthetic_xray, write_images
from .run import add_arguments, run_from_args

__all__ = ["add_arguments", "run_from_args", "synthetic_xray", "write_images"]
