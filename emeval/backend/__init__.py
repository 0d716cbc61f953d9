"""Fast local generation: the `emeval/<model dir>` Inspect provider and its engines."""
