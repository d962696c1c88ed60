"""The clinical meaning of a result: the ICDR grades, an image's outcome, a patient's."""
