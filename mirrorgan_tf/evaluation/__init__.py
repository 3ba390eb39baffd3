"""What evaluation and sampling share: the evaluation captions and the trained generator."""
