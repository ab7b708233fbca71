"""pneumo: a second-opinion pneumonia screen for chest X-rays.

Keras 3 / TensorFlow transfer learning on Xception, with a calibrated operating
point chosen on validation. This package is a decision aid, not a diagnosis.
"""

__version__ = "0.1.0"
