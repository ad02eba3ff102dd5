"""OpenAI's Batch API: whether a run hands its work to a job, the job's submission and polls, what runs take from it."""
