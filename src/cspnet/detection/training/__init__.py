"""Training detectors with the classification job's engine (Lightning, exact resume, atomic checkpoints)."""

from cspnet.detection.training.config import DEFAULT_DETECTOR, DetectionTrainConfig
from cspnet.detection.training.runner import fit_detector
from cspnet.detection.training.trained import TrainedDetector, load_trained_detector

__all__ = ["DEFAULT_DETECTOR", "DetectionTrainConfig", "TrainedDetector", "fit_detector", "load_trained_detector"]
