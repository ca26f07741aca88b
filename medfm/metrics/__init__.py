"""Classification metrics as pure functions of arrays, and the one bootstrap."""
