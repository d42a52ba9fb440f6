"""The report of a sweep: its jobs' final test metrics summarized per setting and per parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.jobs.status import FINISHED, JobStatus
from app.sweeps import stats
from app.sweeps.schemas import (
    BestSetting,
    MetricSummary,
    ParameterReport,
    SettingRef,
    SettingReport,
    SweepReport,
    ValueMean,
)
from worker.engine.metrics import lower_is_better


@dataclass(frozen=True)
class SweepJobRow:
    id: str
    setting: dict[str, Any]
    setting_key: str
    seed: int
    status: str
    metrics: dict[str, float | None] = field(default_factory=dict)  # final metrics of the ranking split
    trial_number: int | None = None


def _summary(s: stats.Summary) -> MetricSummary:
    return MetricSummary.model_validate(s.as_dict())


def _ref(key: str, setting: dict[str, Any], s: stats.Summary) -> SettingRef:
    return SettingRef(setting_key=key, setting=setting, n=s.n, mean=s.mean, ci=list(s.ci) if s.ci else None)


def build_report(
    rows: list[SweepJobRow],
    swept_paths: list[str],
    main_metric: str,
    *,
    split: str = "test",
    importance: dict[str, float] | None = None,
) -> SweepReport:
    """Statistics over the succeeded jobs only; the others are counted in ``total`` / ``finished``.

    ``rows`` carry the final metrics of ``split`` (test for grid and random sweeps, val for tpe);
    ``importance`` is each swept parameter's fANOVA share, when it could be computed.
    """
    lower = lower_is_better(main_metric)
    settings: dict[str, dict[str, Any]] = {}
    jobs_per_setting: dict[str, int] = {}
    values: dict[str, dict[str, list[float]]] = {}
    succeeded: dict[str, int] = {}
    counted: set[tuple[str, int]] = set()
    for row in rows:
        settings.setdefault(row.setting_key, row.setting)
        jobs_per_setting[row.setting_key] = jobs_per_setting.get(row.setting_key, 0) + 1
        values.setdefault(row.setting_key, {})
        if row.status != JobStatus.SUCCEEDED or (row.setting_key, row.seed) in counted:
            # A setting run again with a seed it already ran (a tpe search proposes a setting twice; every
            # trial has the same seed) repeats that run, not a new draw: it counts once.
            continue
        counted.add((row.setting_key, row.seed))
        succeeded[row.setting_key] = succeeded.get(row.setting_key, 0) + 1
        for name, value in row.metrics.items():
            if value is not None:  # e.g. mase is null where the naive forecast is exact
                values[row.setting_key].setdefault(name, []).append(value)

    per_setting = {
        key: {name: stats.summarize(vs, bounds=stats.metric_bounds(name)) for name, vs in sorted(metric_values.items())}
        for key, metric_values in values.items()
    }
    main_summaries = {key: s[main_metric] for key, s in per_setting.items() if main_metric in s}
    order, ranked = stats.rank_settings(main_summaries, lower)  # type: ignore[arg-type]
    rank_of = {key: i for i, key in enumerate(order, start=1)}

    setting_reports = []
    position = {key: i for i, key in enumerate(settings)}
    for key in sorted(settings, key=lambda k: (rank_of.get(k, len(rank_of) + 1), position[k])):
        main = main_summaries.get(key)
        cv = main.cv if main is not None else None
        setting_reports.append(
            SettingReport(
                setting_key=key,
                setting=settings[key],
                rank=rank_of.get(key),
                jobs=jobs_per_setting[key],
                n=succeeded.get(key, 0),
                metrics={name: _summary(s) for name, s in per_setting[key].items()},
                seed_cv=cv,
                high_seed_variance=cv is not None and cv > stats.HIGH_SEED_CV,
            )
        )

    best = None
    if ranked is not None:
        best_key = str(ranked.best)
        runner_key = str(ranked.runner_up) if ranked.runner_up is not None else None
        best = BestSetting(
            best=_ref(best_key, settings[best_key], main_summaries[best_key]),
            runner_up=_ref(runner_key, settings[runner_key], main_summaries[runner_key]) if runner_key else None,
            distinguishable=ranked.distinguishable,
            explanation=ranked.explanation,
        )

    parameters: dict[str, ParameterReport] = {}
    setting_means = [(settings[key], s.mean) for key, s in main_summaries.items()]
    if setting_means:
        for path in swept_paths:
            effect = stats.parameter_effect(setting_means, path)
            parameters[path] = ParameterReport(
                values=[ValueMean(value=v, mean=m, settings=c) for v, m, c in effect.value_means],
                range=effect.range,
                share_of_variance=effect.share_of_variance,
                importance=importance.get(path) if importance else None,
            )

    total = len(rows)
    finished = sum(1 for r in rows if r.status in FINISHED)
    return SweepReport(
        split=split,  # type: ignore[arg-type]
        pruned=sum(1 for r in rows if r.status == JobStatus.PRUNED),
        main_metric=main_metric,
        lower_is_better=lower,
        confidence_level=stats.CONFIDENCE_LEVEL,
        high_seed_cv_threshold=stats.HIGH_SEED_CV,
        total=total,
        finished=finished,
        succeeded=sum(succeeded.values()),
        complete=finished == total,
        settings=setting_reports,
        best=best,
        parameters=parameters,
    )
