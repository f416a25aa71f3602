"""Rate limits, concurrency limits and token budgets, in memory or shared through Redis."""
