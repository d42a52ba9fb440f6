// rnnlab dashboard charts: pure functions from API data to Apache ECharts options (no DOM, no fetch).
// Every label that comes from user data is plain text to ECharts (canvas text, never HTML), except
// tooltips, whose formatters below escape it.
"use strict";

const Charts = (() => {
  // Significant digits, never a 20-digit float: 0.01235, 1235, 1.933e+22 (exponent form too).
  function fmt(x, digits = 4) {
    if (x === null || x === undefined || x === "") return "–";
    if (typeof x !== "number") return String(x);
    if (!Number.isFinite(x)) return String(x);
    if (x === 0) return "0";
    const abs = Math.abs(x);
    if (abs >= 1e6 || abs < 1e-3) return x.toExponential(digits - 1).replace(/\.?0+e/, "e");
    return new Intl.NumberFormat("en-US", { maximumSignificantDigits: digits, useGrouping: false }).format(x);
  }

  // Axis ticks: nice round numbers, so as many digits as they carry (never three "0.995" in a row).
  const tick = (v) => fmt(v, 6);

  function escapeHtml(value) {
    return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // Losses that fall by orders of magnitude read better on a log axis (only possible when all are > 0).
  function wantsLog(values) {
    const finite = values.filter((v) => typeof v === "number" && Number.isFinite(v));
    if (finite.length < 2 || finite.some((v) => v <= 0)) return false;
    return Math.max(...finite) / Math.min(...finite) > 20;
  }

  const axisName = (name, gap) => ({ name, nameLocation: "middle", nameGap: gap, nameTextStyle: { fontWeight: "bold" } });

  /** Per-epoch lines: series = [{name, epochs, values}], the best epoch marked with a dashed line. */
  function curves({ series, yName, bestEpoch = null, log = null }) {
    const all = series.flatMap((s) => s.values);
    const logScale = log === null ? wantsLog(all) : log;
    const maxLen = Math.max(0, ...series.map((s) => s.epochs.length));
    const lines = series.map((s, i) => ({
      name: s.name,
      type: "line",
      data: s.epochs.map((e, j) => [e, s.values[j] === null || (logScale && s.values[j] <= 0) ? "-" : s.values[j]]),
      // A one-epoch job is a dot, not an empty box; long runs are lines without markers.
      showSymbol: maxLen <= 40,
      symbolSize: maxLen <= 1 ? 10 : 5,
      connectNulls: false,
      ...(i === 0 && bestEpoch
        ? {
            markLine: {
              symbol: "none",
              silent: true,
              lineStyle: { type: "dashed", color: "#888" },
              label: { formatter: `best epoch ${bestEpoch}`, position: "insideEndTop" },
              data: [{ xAxis: bestEpoch }],
            },
          }
        : {}),
    }));
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: { trigger: "axis", valueFormatter: (v) => fmt(v), axisPointer: { type: "line" } },
      legend: { top: 0, type: "scroll" },
      grid: { left: 64, right: 24, top: 40, bottom: 48 },
      // One epoch: centre its point instead of pinning it to the axis.
      xAxis: maxLen <= 1
        ? { type: "value", ...axisName("epoch", 28), min: 0, max: 2, interval: 1, axisLabel: { formatter: (v) => (v === 1 ? "1" : "") } }
        : { type: "value", ...axisName("epoch", 28), minInterval: 1, min: 1, max: "dataMax",
            // The tooltip's heading: "epoch 3", not the axis value "3.00".
            axisPointer: { label: { formatter: (p) => `epoch ${Math.round(p.value)}` } } },
      yAxis: {
        type: logScale ? "log" : "value",
        ...axisName(yName + (logScale ? " (log scale)" : ""), 52),
        scale: !logScale,
        axisLabel: { formatter: tick },
      },
      dataZoom: [{ type: "inside", xAxisIndex: 0 }],
      series: lines,
    };
  }

  // An error bar drawn with a custom series: data items are [low, high, categoryIndex] (horizontal)
  // or [categoryIndex, low, high] (vertical).
  function errorBars(name, data, horizontal, color) {
    return {
      name,
      type: "custom",
      data,
      z: 10,
      itemStyle: { color },
      encode: horizontal ? { x: [0, 1], y: 2 } : { x: 0, y: [1, 2] },
      renderItem(params, api) {
        const style = api.style({ stroke: color, fill: null, lineWidth: 2 });
        let a;
        let b;
        let half;
        if (horizontal) {
          a = api.coord([api.value(0), api.value(2)]);
          b = api.coord([api.value(1), api.value(2)]);
          half = api.size([0, 1])[1] * 0.18;
          return {
            type: "group",
            children: [
              { type: "line", shape: { x1: a[0], y1: a[1], x2: b[0], y2: b[1] }, style },
              { type: "line", shape: { x1: a[0], y1: a[1] - half, x2: a[0], y2: a[1] + half }, style },
              { type: "line", shape: { x1: b[0], y1: b[1] - half, x2: b[0], y2: b[1] + half }, style },
            ],
          };
        }
        a = api.coord([api.value(0), api.value(1)]);
        b = api.coord([api.value(0), api.value(2)]);
        half = api.size([1, 0])[0] * 0.12;
        return {
          type: "group",
          children: [
            { type: "line", shape: { x1: a[0], y1: a[1], x2: b[0], y2: b[1] }, style },
            { type: "line", shape: { x1: a[0] - half, y1: a[1], x2: a[0] + half, y2: a[1] }, style },
            { type: "line", shape: { x1: b[0] - half, y1: b[1], x2: b[0] + half, y2: b[1] }, style },
          ],
        };
      },
    };
  }

  /** The model's test value with its CI next to each baseline's value (same metric, same windows). */
  function baselines({ metric, model, interval, baselines: values, lowerIsBetter }) {
    const names = ["model", ...Object.keys(values)];
    const data = names.map((n, i) => ({
      value: i === 0 ? model : values[n],
      itemStyle: { color: i === 0 ? "#2f6fde" : "#9aa3ae" },
      // The model's CI bar ends past its bar: its value goes inside so the two never overlap.
      ...(i === 0 ? { label: { position: "insideLeft", color: "#fff" } } : {}),
    }));
    const series = [{ name: metric, type: "bar", data, barMaxWidth: 28, label: { show: true, position: "right", formatter: (p) => fmt(p.value, 3) } }];
    if (interval) series.push(errorBars("95% CI", [[interval[0], interval[1], 0]], true, "#d3365d"));
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => p.seriesType === "custom" ? `95% CI [${fmt(p.value[0])}, ${fmt(p.value[1])}]` : `${escapeHtml(p.name)}: ${fmt(p.value)}` },
      grid: { left: 120, right: 64, top: 16, bottom: 48 },
      xAxis: { type: "value", ...axisName(`test ${metric} (${lowerIsBetter ? "lower" : "higher"} is better)`, 28), axisLabel: { formatter: tick } },
      yAxis: { type: "category", data: names, inverse: true },
      series,
    };
  }

  function heatmapBase({ xName, yName, xLabels, yLabels, data, max, min = 0, colorBarText, tooltip }) {
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: { position: "top", formatter: tooltip },
      grid: { left: 80, right: 96, top: 16, bottom: 56 },
      xAxis: { type: "category", data: xLabels, ...axisName(xName, 32), splitArea: { show: true } },
      yAxis: { type: "category", data: yLabels, ...axisName(yName, 56), inverse: true, splitArea: { show: true } },
      visualMap: {
        min,
        max: max > min ? max : min + 1,
        calculable: true,
        orient: "vertical",
        right: 8,
        top: "middle",
        text: colorBarText,
        formatter: (v) => fmt(v, 3),
        inRange: { color: ["#f7fbff", "#6baed6", "#08306b"] },
      },
      series: [{ type: "heatmap", data, label: { show: false }, emphasis: { itemStyle: { borderColor: "#333", borderWidth: 1 } } }],
    };
  }

  /** Rows are true classes, columns predicted classes; the count is printed in each cell. */
  function confusion({ labels, matrix }) {
    const data = [];
    matrix.forEach((row, t) => row.forEach((count, p) => data.push([p, t, count])));
    const option = heatmapBase({
      xName: "predicted class",
      yName: "true class",
      xLabels: labels,
      yLabels: labels,
      data,
      max: Math.max(0, ...data.map((d) => d[2])),
      colorBarText: ["count", ""],
      tooltip: (p) => `true ${escapeHtml(labels[p.value[1]])} → predicted ${escapeHtml(labels[p.value[0]])}: ${p.value[2]}`,
    });
    option.series[0].label = { show: true };
    return option;
  }

  /** Time steps (oldest first, the last input is t) × features, coloured by integrated-gradient importance. */
  function attribution({ features, importance }) {
    const steps = importance.length;
    const stepLabels = importance.map((_, i) => (i === steps - 1 ? "t" : `t−${steps - 1 - i}`));
    const data = [];
    importance.forEach((row, s) => row.forEach((v, f) => data.push([f, s, v])));
    const values = data.map((d) => d[2]);
    return heatmapBase({
      xName: "feature",
      yName: "time step",
      xLabels: features,
      yLabels: stepLabels,
      data,
      min: Math.min(0, ...values),
      max: Math.max(0, ...values),
      colorBarText: ["importance", ""],
      tooltip: (p) => `${escapeHtml(features[p.value[0]])} at ${stepLabels[p.value[1]]}: ${fmt(p.value[2])}`,
    });
  }

  /** How much worse the main metric gets when one feature is shuffled (bigger = more relied on). */
  function permutation({ importance, metric }) {
    const entries = Object.entries(importance).sort((a, b) => b[1] - a[1]);
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => `${escapeHtml(p.name)}: ${fmt(p.value)}` },
      grid: { left: 120, right: 64, top: 16, bottom: 48 },
      xAxis: { type: "value", ...axisName(`${metric} worse when shuffled`, 28), axisLabel: { formatter: tick } },
      yAxis: { type: "category", data: entries.map((e) => e[0]), inverse: true },
      series: [{ type: "bar", data: entries.map((e) => e[1]), barMaxWidth: 24, label: { show: true, position: "right", formatter: (p) => fmt(p.value, 3) } }],
    };
  }

  // Settings named on the axis only while their names fit side by side; otherwise numbered as the
  // "#" column of the settings table (the tooltip still names each).
  function settingTicks(labels) {
    const longest = Math.max(0, ...labels.map((l) => l.length));
    return labels.length * longest > 110 || longest > 40 ? labels.map((_, i) => `#${i + 1}`) : labels;
  }

  /** Per-setting mean with its CI as error bars; each seed's value as a point just right of it. */
  function sweepSettings({ labels, means, intervals, seeds, metric, split = "test" }) {
    const ticks = settingTicks(labels);
    const numbered = ticks !== labels;
    // A value axis with one unit per setting, so seed points can sit beside the mean instead of under it.
    const rank = {};
    const seedPoints = seeds.map((s) => {
      rank[s.setting] = (rank[s.setting] || 0) + 1;
      return { value: [s.setting + 0.1 + 0.05 * rank[s.setting], s.value], seed: s.seed, setting: s.setting };
    });
    // One wide interval (two seeds of an unstable setting: [0.008, 5]) flattened every other setting
    // at the bottom of a linear axis: a log axis when the positive values span more than 20×.
    const logScale = wantsLog([...means, ...intervals.flatMap((ci) => ci || []), ...seeds.map((s) => s.value)]);
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: {
        trigger: "item",
        formatter: (p) => {
          if (p.seriesType === "custom") return `${escapeHtml(labels[p.value[0]])}<br>95% CI [${fmt(p.value[1])}, ${fmt(p.value[2])}]`;
          if (p.seriesName === "seed") return `${escapeHtml(labels[p.data.setting])}<br>seed ${p.data.seed}: ${fmt(p.value[1])}`;
          return `${escapeHtml(labels[p.value[0]])}<br>mean: ${fmt(p.value[1])}`;
        },
      },
      legend: { top: 0 },
      grid: { left: 64, right: 24, top: 40, bottom: 64 },
      xAxis: {
        type: "value",
        min: -0.5,
        max: labels.length - 0.5,
        ...axisName(numbered ? "setting (# in the table below)" : "setting", 40),
        splitLine: { show: false },
        // Ticks and labels at the settings only (customValues, ECharts >= 5.5.1), not at round numbers.
        axisTick: { customValues: labels.map((_, i) => i) },
        axisLabel: { customValues: labels.map((_, i) => i), formatter: (v) => ticks[v] ?? "", hideOverlap: true },
      },
      // onZero off: the x axis spans -0.5.., so the y axis would otherwise cross it at the first setting.
      yAxis: {
        type: logScale ? "log" : "value",
        scale: !logScale,
        axisLine: { onZero: false },
        ...axisName(`${split} ${metric}${logScale ? " (log)" : ""}`, 52),
        axisLabel: { formatter: tick },
      },
      series: [
        errorBars("95% CI", intervals.map((ci, i) => (ci ? [i, ci[0], ci[1]] : null)).filter(Boolean), false, "#d3365d"),
        { name: "mean", type: "scatter", symbol: "diamond", symbolSize: 14, data: means.map((m, i) => (m === null ? null : [i, m])).filter(Boolean), z: 11 },
        { name: "seed", type: "scatter", symbolSize: 8, itemStyle: { color: "#e0662d", opacity: 0.8 }, data: seedPoints, z: 12 },
      ],
    };
  }

  /** One line per job through its parameter values to its metric, coloured by the metric. */
  function parallel({ parameters, rows, metric, lowerIsBetter, split = "test" }) {
    const axes = parameters.map((p, i) => {
      const values = rows.map((r) => r[i]);
      const numeric = values.every((v) => typeof v === "number");
      // 0.001, 0.003, 0.01 are evenly apart on a log axis, crowded at 0 on a linear one.
      if (numeric && wantsLog(values)) return { dim: i, name: `${p} (log)`, type: "log", axisLabel: { formatter: tick } };
      return numeric
        ? { dim: i, name: p, type: "value", scale: true, axisLabel: { formatter: tick } }
        : { dim: i, name: p, type: "category", data: [...new Set(values.map(String))].sort() };
    });
    const metricDim = parameters.length;
    const metricValues = rows.map((r) => r[metricDim]);
    axes.push({ dim: metricDim, name: `${split} ${metric}`, type: "value", scale: true, axisLabel: { formatter: tick } });
    const data = rows.map((r) => r.map((v, i) => (i < metricDim && axes[i].type === "category" ? String(v) : v)));
    const lo = Math.min(...metricValues);
    const hi = Math.max(...metricValues);
    return {
      backgroundColor: "transparent",
      animation: false,
      parallel: { left: 90, right: 150, top: 48, bottom: 32 },
      parallelAxis: axes.map((a) => ({ ...a, nameTextStyle: { fontWeight: "bold" } })),
      visualMap: {
        type: "continuous",
        dimension: metricDim,
        min: lo,
        max: hi > lo ? hi : lo + 1,
        right: 8,
        top: "middle",
        calculable: true,
        text: [lowerIsBetter ? "worse" : "better", lowerIsBetter ? "better" : "worse"],
        formatter: (v) => fmt(v, 3),
        inRange: { color: lowerIsBetter ? ["#2a9d5b", "#c9a227", "#d3365d"] : ["#d3365d", "#c9a227", "#2a9d5b"] },
      },
      series: [{ type: "parallel", data, lineStyle: { width: 2, opacity: 0.7 } }],
    };
  }

  // A continuous parameter (a tpe search's learning rate: every trial its own float) has as many
  // values as trials: its values are grouped into at most 5 bins of about equal counts (on a log scale
  // when they span more than 20x), each bar the mean of the setting means in it, weighted by settings.
  const MAX_VALUES = 6;
  function effectBars(path, p) {
    const short = path.split(".").pop();
    const values = p.values;
    const numeric = values.every((v) => typeof v.value === "number");
    if (!numeric || values.length <= MAX_VALUES) {
      return values.map((v) => ({ label: `${short}=${typeof v.value === "number" ? fmt(v.value) : v.value}`,
        name: `${path} = ${typeof v.value === "number" ? fmt(v.value) : v.value}`, value: v.mean, path, settings: v.settings }));
    }
    const sorted = [...values].sort((a, b) => a.value - b.value);
    const bins = Math.min(5, sorted.length);
    const out = [];
    for (let b = 0; b < bins; b++) {
      const members = sorted.slice(Math.floor((b * sorted.length) / bins), Math.floor(((b + 1) * sorted.length) / bins));
      const weight = members.reduce((a, v) => a + (v.settings || 1), 0);
      const mean = members.reduce((a, v) => a + v.mean * (v.settings || 1), 0) / weight;
      const lo = members[0].value;
      const hi = members[members.length - 1].value;
      const range = lo === hi ? fmt(lo, 3) : `${fmt(lo, 3)}–${fmt(hi, 3)}`;
      out.push({ label: `${short} ${range}`, name: `${path} from ${fmt(lo)} to ${fmt(hi)} (${weight} settings)`, value: mean, path, settings: weight });
    }
    return out;
  }

  /** For each swept parameter, the mean of the setting means at each of its values (or value bins). */
  function parameterEffect({ parameters, metric, split = "test" }) {
    const bars = Object.entries(parameters).flatMap(([path, p]) => effectBars(path, p));
    const paths = Object.keys(parameters);
    const palette = ["#2f6fde", "#e0662d", "#2a9d5b", "#9b4dca", "#c9a227", "#d3365d"];
    // Every bar keeps its label: turned when there are many, cut to 24 characters (whole in the tooltip).
    const turned = bars.length > 5 || bars.some((b) => b.label.length > 16);
    return {
      backgroundColor: "transparent",
      animation: false,
      tooltip: { trigger: "item", formatter: (p) => `${escapeHtml(bars[p.dataIndex].name)}: mean ${fmt(p.value)}` },
      grid: { left: 64, right: 24, top: 16, bottom: turned ? 112 : 64 },
      xAxis: {
        type: "category",
        data: bars.map((b) => b.label),
        ...axisName("parameter value", turned ? 100 : 40),
        axisLabel: { interval: 0, rotate: turned ? 35 : 0, hideOverlap: false, formatter: (v) => (v.length > 24 ? `${v.slice(0, 23)}…` : v) },
      },
      // Bars start at zero: a bar's length is its value (a cut axis makes 4% look like 10×).
      yAxis: { type: "value", scale: false, ...axisName(`mean ${split} ${metric}`, 52), axisLabel: { formatter: tick } },
      series: [
        {
          type: "bar",
          barMaxWidth: 36,
          data: bars.map((b) => ({ value: b.value, itemStyle: { color: palette[paths.indexOf(b.path) % palette.length] } })),
          label: { show: bars.length <= 12, position: "top", formatter: (p) => fmt(p.value, 3) },
        },
      ],
    };
  }

  return { fmt, escapeHtml, wantsLog, curves, baselines, confusion, attribution, permutation, sweepSettings, parallel, parameterEffect };
})();
