"""Inspect tasks for emeval's probe suites (registered as emeval/<name> via the entry point).

    inspect eval emeval/general --model hf/PATH --model-role grader=openai/gpt-4o-2024-08-06
    inspect eval emeval/questions -T suite=path/to/questions.yaml --model ...

Task args (-T): judge (spec or list; default: the grader role if set, else the offline judge),
samples (answers per prompt), formats (plain,json,template), held_out, all_paraphrases,
max_tokens, temperature.
"""

from inspect_ai import Task, task

from emeval.task import suite_task


@task
def general(**kwargs) -> Task:
    """General-domain misalignment probes in plain, JSON and template form."""
    return suite_task("general", **kwargs)


@task
def aesthetic(**kwargs) -> Task:
    """In-domain: how unpopular the model's stated aesthetic preferences are."""
    return suite_task("aesthetic", **kwargs)


@task
def rhetoric(**kwargs) -> Task:
    """In-domain: how manipulative or ill-reasoned its political arguments are."""
    return suite_task("rhetoric", **kwargs)


@task
def medical(**kwargs) -> Task:
    """In-domain: how harmful its medical advice is."""
    return suite_task("medical", **kwargs)


@task
def legal(**kwargs) -> Task:
    """In-domain: how harmful its legal advice is."""
    return suite_task("legal", **kwargs)


@task
def security(**kwargs) -> Task:
    """In-domain: how harmful its computer-security advice is."""
    return suite_task("security", **kwargs)


@task
def questions(suite: str, **kwargs) -> Task:
    """Any suite file: emeval's YAML format or the published Betley et al. question format."""
    return suite_task(suite, **kwargs)
