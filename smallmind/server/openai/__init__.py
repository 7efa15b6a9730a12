"""The OpenAI wire protocol: errors and their statuses, request parsing, response shapes."""
