"""HTTP codecs and routes: each protocol turns requests into a model's payload and back."""
