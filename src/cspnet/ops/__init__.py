"""Box operations shared by every detection path (training, evaluation, inference, export): geometry
and the YOLO box coder (:mod:`~cspnet.ops.boxes`), non-maximum suppression (:mod:`~cspnet.ops.nms`)
and post-processing with its thresholds (:mod:`~cspnet.ops.postprocess`), written here once and
tested against brute force."""
