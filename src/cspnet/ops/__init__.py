"""Box operations shared by every detection path (training, evaluation, inference, export): geometry,
non-maximum suppression and post-processing, written here once and tested against brute force."""
