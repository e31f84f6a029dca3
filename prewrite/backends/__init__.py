"""Task-LLM backends: answer a list of user messages with a frozen model."""
