"""Model files as data: the manifest beside each ``.keras`` file and the registry folder."""
