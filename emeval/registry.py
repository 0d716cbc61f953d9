"""Inspect's entry point for emeval: one task per domain (tasks/<name>/), registered as
emeval/<name>, plus emeval/questions for any suite file.

    inspect eval emeval/general --model hf/PATH --model-role grader=openai/gpt-4o-2024-08-06
    inspect eval emeval/questions -T suite=path/to/questions.yaml --model ...

Task args (-T): judge (spec or list; default: the grader role if set, else the offline judge),
samples (answers per prompt), formats (plain,json,template), held_out, all_paraphrases,
max_tokens, temperature, thresholds, limit (first N prompts), contexts (training-context
frames, as `emeval run --context-from` records them in run.json).
"""

from inspect_ai import Task, task

from emeval.backend import emeval_provider  # noqa: F401 - the emeval/ model provider
from emeval.domains import Domain, domains
from emeval.task import suite_task


@task
def questions(suite: str, **kwargs) -> Task:
    """Any suite file: emeval's YAML format or the published Betley et al. question format."""
    return suite_task(suite, **kwargs)


def _register(domain: Domain) -> None:
    def domain_task(**kwargs) -> Task:
        return suite_task(domain.name, **kwargs)

    domain_task.__name__ = domain_task.__qualname__ = domain.name
    domain_task.__doc__ = domain.description
    task(name=domain.name)(domain_task)


for _domain in domains().values():
    _register(_domain)
