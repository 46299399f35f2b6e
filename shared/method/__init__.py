"""The paper's pieces that several services share: grading, prompts, markers, evaluation,
statistics."""
