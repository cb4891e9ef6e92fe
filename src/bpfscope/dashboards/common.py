"""What every bpfscope dashboard shares: datasources, template variables and panel helpers.

A dashboard module says only what it shows; the wiring (datasource uids, the host/comm/pid
variables, Infinity query JSON, ids and refIds) lives here once.

Variables and why they look the way they do:
- host, comm, pid come from the collector's stored records (Infinity), chained
  host -> comm -> pid, never "All": the collector's REST filters are exact matches and an
  empty or "All" value would filter everything out. So a process filter always names a
  real process; panels about every process simply leave comm/pid out of their query.
- Prometheus series carry `host` only when the scrape config adds it as a target label
  (deploy/kubernetes does, from the node name); a single-node scrape config adds none.
  HOST_MATCH therefore also matches series without the label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders.dashboard import CustomVariable, Dashboard, DashboardLink, QueryVariable, Row
from grafana_foundation_sdk.builders.heatmap import HeatmapColorOptions as HeatmapColor
from grafana_foundation_sdk.builders.heatmap import Panel as HeatmapPanel
from grafana_foundation_sdk.builders.heatmap import YAxisConfig as HeatmapYAxis
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.builders.stat import Panel as StatPanel
from grafana_foundation_sdk.builders.table import Panel as TablePanel
from grafana_foundation_sdk.builders.timeseries import Panel as TimeseriesPanel
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import BigValueGraphMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from grafana_foundation_sdk.models.dashboard import (
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

PROMETHEUS_UID = "bpfscope-prometheus"
INFINITY_UID = "bpfscope-infinity"
INFINITY_TYPE = "yesoreyeram-infinity-datasource"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
INFINITY = DataSourceRef(type_val=INFINITY_TYPE, uid=INFINITY_UID)
TAG = "bpfscope"

HOST_MATCH = 'host=~"${host}|"'  # the selected host, or no host label at all (see module doc)
RATE = "$__rate_interval"
TIME_RANGE = (("from", "${__from}"), ("to", "${__to}"))  # epoch ms, what the collector parses
VARIABLE_ROWS = "1000"  # newest records a variable lists values from


# ---- Infinity queries against the collector's REST API --------------------------------

@dataclass(frozen=True)
class Column:
    """One column an Infinity query reads: a gjson path into each row, its name and type."""

    selector: str
    text: str
    type: str = "string"  # string | number | timestamp_epoch (epoch ms)


TIME = Column("time", "time", "timestamp_epoch")


class InfinityQuery(cogvariants.Dataquery):
    """An Infinity JSON query of a collector path; the SDK has no Infinity model of its own."""

    def __init__(self, path: str, params: tuple[tuple[str, str], ...], columns: tuple[Column, ...],
                 fmt: str = "table", ref_id: str = "A") -> None:
        self.path, self.params, self.columns, self.fmt, self.ref_id = path, params, columns, fmt, ref_id

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": INFINITY.to_json(),
            "type": "json",
            "source": "url",
            "parser": "backend",
            "format": self.fmt,
            # Relative: Infinity prefixes the datasource URL (the collector).
            "url": self.path,
            # Params, not a hand-built query string: Infinity URL-encodes each value, so a
            # comm like "kworker/0:1" or "a&b" arrives intact.
            "url_options": {"method": "GET", "data": "",
                            "params": [{"key": k, "value": v} for k, v in self.params]},
            "root_selector": "",
            "columns": [{"selector": c.selector, "text": c.text, "type": c.type} for c in self.columns],
            "filters": [],
        }


class Infinity(cogbuilder.Builder[InfinityQuery]):
    """Builder wrapper so an InfinityQuery goes wherever the SDK takes a target builder."""

    def __init__(self, path: str, params: tuple[tuple[str, str], ...], columns: tuple[Column, ...],
                 fmt: str = "table") -> None:
        self._query = InfinityQuery(path, params, columns, fmt)

    def ref_id(self, ref_id: str) -> Infinity:
        self._query.ref_id = ref_id
        return self

    def build(self) -> InfinityQuery:
        return self._query


def records_query(*filters: tuple[str, str], columns: tuple[Column, ...], limit: int = 1000) -> Infinity:
    """GET /api/v1/records on the selected host and time range, plus the given filters."""
    params = (("host", "${host}"), *filters, *TIME_RANGE, ("limit", str(limit)))
    return Infinity("/api/v1/records", params, columns)


def series_query(field: str, *filters: tuple[str, str], agg: str, group_by: str, group_name: str,
                 value_name: str) -> Infinity:
    """GET /api/v1/series: values[field] per ${bucket} seconds and label value, as one series per group."""
    params = (("field", field), ("host", "${host}"), *filters, *TIME_RANGE,
              ("bucket", "${bucket}"), ("agg", agg), ("group_by", group_by))
    columns = (TIME, Column("group", group_name), Column("value", value_name, "number"))
    return Infinity("/api/v1/series", params, columns, fmt="timeseries")  # long -> wide in Infinity


# ---- template variables -------------------------------------------------------------

def _record_values_variable(column: Column, *filters: tuple[str, str],
                             sort: VariableSort = VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC) -> QueryVariable:
    query = Infinity("/api/v1/records", (*filters, *TIME_RANGE, ("limit", VARIABLE_ROWS)),
                     (column,)).ref_id("variable").build()
    return (QueryVariable(column.text).label(column.text).datasource(INFINITY)
            .query({"queryType": "infinity", "refId": "variable", "query": "", "infinityQuery": query.to_json()})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)  # Grafana de-duplicates the values
            .sort(sort))


def host_variable() -> QueryVariable:
    return _record_values_variable(Column("host", "host"))


def comm_variable(*scope: tuple[str, str]) -> QueryVariable:
    """Command names seen in the records of `scope` (e.g. domain=net: processes with connections)."""
    return _record_values_variable(Column("comm", "comm"), ("host", "${host}"), *scope)


def pid_variable(*scope: tuple[str, str]) -> QueryVariable:
    return _record_values_variable(Column("pid", "pid", "number"), ("host", "${host}"), ("comm", "${comm}"), *scope,
                                   sort=VariableSort.NUMERICAL_ASC)


def bucket_variable() -> CustomVariable:
    """Seconds per point of /api/v1/series (the collector takes seconds, not Grafana's '1m')."""
    return (CustomVariable("bucket").label("bucket (s)").values("10,60,300,3600")
            .current(VariableOption(text="60", value="60", selected=True)))


# ---- panels -------------------------------------------------------------------------

def _ref_ids(targets: list) -> list:
    return [t.ref_id(chr(ord("A") + i)) for i, t in enumerate(targets)]


def prometheus(expr: str, legend: str = "", instant: bool = False) -> PrometheusQuery:
    query = PrometheusQuery().expr(expr).datasource(PROMETHEUS).legend_format(legend or "__auto")
    return query.instant() if instant else query.range()


def prometheus_timeseries(title: str, description: str, *queries: PrometheusQuery, unit: str = "short",
                          width: int = 12) -> TimeseriesPanel:
    return (TimeseriesPanel().title(title).description(description).datasource(PROMETHEUS)
            .targets(_ref_ids(list(queries))).unit(unit).min(0).span(width).fill_opacity(10))


def up_stat(title: str, description: str, query: PrometheusQuery, width: int = 6) -> StatPanel:
    """1/0 shown as up/down in green/red."""
    mapping = ValueMap({"0": ValueMappingResult(text="down", color="red", index=0),
                        "1": ValueMappingResult(text="up", color="green", index=1)})
    return (StatPanel().title(title).description(description).datasource(PROMETHEUS)
            .targets(_ref_ids([query])).mappings([mapping]).span(width).height(5)
            .graph_mode(BigValueGraphMode.NONE)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))


def value_stat(title: str, description: str, query: PrometheusQuery, unit: str = "short",
               width: int = 6) -> StatPanel:
    return (StatPanel().title(title).description(description).datasource(PROMETHEUS)
            .targets(_ref_ids([query])).unit(unit).span(width).height(5)
            .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"])))


def infinity_table(title: str, description: str, query: Infinity, width: int = 12, height: int = 10,
                   transformations: list[DataTransformerConfig] | None = None,
                   sort_by: str | None = None) -> TablePanel:
    panel = (TablePanel().title(title).description(description).datasource(INFINITY)
             .targets(_ref_ids([query])).span(width).height(height))
    if transformations:
        panel = panel.transformations(transformations)
    if sort_by:
        panel = panel.sort_by([common_builders.TableSortByFieldState().display_name(sort_by).desc(True)])
    return panel


def prometheus_heatmap(title: str, description: str, query: PrometheusQuery, unit: str = "s",
                       width: int = 12) -> HeatmapPanel:
    """A Prometheus histogram (its _bucket series, summed by le) as a heatmap over time."""
    return (HeatmapPanel().title(title).description(description).datasource(PROMETHEUS)
            .targets(_ref_ids([query.format(PromQueryFormat.HEATMAP)])).span(width).calculate(False)
            .y_axis(HeatmapYAxis().unit(unit)).color(HeatmapColor().scheme("Oranges").exponent(0.5)))


def infinity_timeseries(title: str, description: str, query: Infinity, legend_label: str, unit: str = "short",
                        width: int = 12) -> TimeseriesPanel:
    """legend_label: the group column of a series_query; its value names each line."""
    return (TimeseriesPanel().title(title).description(description).datasource(INFINITY)
            .targets(_ref_ids([query])).unit(unit).min(0).span(width).fill_opacity(10)
            .display_name(f"${{__field.labels.{legend_label}}}"))


def group_by(keys: tuple[str, ...], sums: tuple[str, ...]) -> DataTransformerConfig:
    """Grafana's groupBy transformation: one row per keys, the sum of each of sums ('<name> (sum)')."""
    fields: dict[str, object] = {k: {"operation": "groupby", "aggregations": []} for k in keys}
    fields.update({s: {"operation": "aggregate", "aggregations": ["sum"]} for s in sums})
    return DataTransformerConfig(id_val="groupBy", options={"fields": fields})


# ---- dashboards ---------------------------------------------------------------------

def dashboard(uid: str, title: str, description: str, tags: tuple[str, ...] = (),
              scope: tuple[tuple[str, str], ...] = ()) -> Dashboard:
    """A dashboard with the shared variables, time range and links to the other bpfscope dashboards.
    scope: record filters the comm/pid choices come from (a domain's dashboard offers its processes)."""
    others = (DashboardLink("bpfscope").type(DashboardLinkType.DASHBOARDS).tags([TAG])
              .as_dropdown(True).include_vars(True).keep_time(True))
    return (Dashboard(title).uid(uid).description(description).tags([TAG, *tags])
            .time("now-15m", "now").refresh("10s").timezone("browser").link(others)
            .with_variable(host_variable()).with_variable(comm_variable(*scope))
            .with_variable(pid_variable(*scope)))


def row(title: str) -> Row:
    return Row(title)


def panels(model: dict) -> list[dict]:
    """Every panel of a rendered dashboard in layout order, those inside collapsed rows too."""
    out = []
    for panel in model.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def render(builder: Dashboard) -> dict:
    """The dashboard as Grafana JSON: plain dicts, panel ids 1..n in layout order."""
    model = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for i, panel in enumerate(panels(model), start=1):
        panel["id"] = i  # the SDK leaves 0 or nothing; Grafana wants unique ids
    return model


def promql_expressions(model: dict) -> list[str]:
    """Every PromQL expression of a rendered dashboard (panels and Prometheus variables)."""
    exprs = [t["expr"] for p in panels(model) for t in p.get("targets", [])
             if t.get("datasource", {}).get("type") == "prometheus"]
    for var in model.get("templating", {}).get("list", []):
        if var.get("datasource", {}).get("type") == "prometheus":
            query = var.get("query")
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def infinity_queries(model: dict) -> list[tuple[str, dict]]:
    """(where, query) for every Infinity query of a rendered dashboard: variables first, then panels."""
    out = []
    for var in model.get("templating", {}).get("list", []):
        if var.get("datasource", {}).get("type") == INFINITY_TYPE:
            out.append((f"variable {var['name']}", var["query"]["infinityQuery"]))
    for panel in panels(model):
        for target in panel.get("targets", []):
            if target.get("datasource", {}).get("type") == INFINITY_TYPE:
                out.append((f"panel {panel['title']!r}", target))
    return out
