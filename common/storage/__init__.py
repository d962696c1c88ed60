"""Where image and heat-map bytes live: content-addressed objects, and who may place or
remove them."""
