"""Runtime pieces that know nothing of the project: the event loop, the request limiter, the rate budget."""
