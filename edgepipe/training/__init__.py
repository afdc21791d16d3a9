"""What the training-type stages share: the fit loop, evaluation, outputs, the model zoo, the doctor."""
