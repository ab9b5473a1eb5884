"""Layer 3: loading and running models (Keras, TF graphs, SavedModels, TFLite, containers), activation
statistics, and the user's own code. See docs/design.md."""
