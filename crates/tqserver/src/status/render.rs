//! php-fpm's text, XML, HTML and OpenMetrics pages of a pool, each a walk
//! over the page's [`fields`]. What a format adds lives in the tables
//! below: php-fpm's spelling of a name in text, its date for "start time",
//! and which fields are php-fpm's `phpfpm_*` series.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use super::fields::{Cell, Fields, fields};
use super::{PoolPage, ProcessPage, fpm_time};

/// Where php-fpm's text and HTML pages name a field other than its JSON.
const TEXT_NAMES: [(&str, &str); 1] = [("request uri", "request URI")];

/// The XML element of one item of a list.
const XML_ITEMS: [(&str, &str); 1] = [("processes", "process")];

/// Fields holding unix seconds: text and HTML show php-fpm's date.
const DATES: [&str; 1] = ["start time"];

/// php-fpm's `?openmetrics` series: the field, the series, its type, its
/// help. Other fields are tqserver's and are on `/metrics` instead.
const OPENMETRICS: [(&str, &str, &str, &str); 11] = [
    (
        "start since",
        "start_since",
        "gauge",
        "Seconds since the pool started.",
    ),
    (
        "accepted conn",
        "accepted_connections",
        "counter",
        "Requests accepted by the pool.",
    ),
    (
        "listen queue",
        "listen_queue",
        "gauge",
        "Requests waiting for a worker.",
    ),
    (
        "max listen queue",
        "max_listen_queue",
        "gauge",
        "Most requests ever waiting for a worker.",
    ),
    (
        "listen queue len",
        "listen_queue_length",
        "gauge",
        "Bound of the wait queue.",
    ),
    (
        "idle processes",
        "idle_processes",
        "gauge",
        "Idle worker processes.",
    ),
    (
        "active processes",
        "active_processes",
        "gauge",
        "Busy worker processes.",
    ),
    (
        "total processes",
        "total_processes",
        "gauge",
        "Worker processes.",
    ),
    (
        "max active processes",
        "max_active_processes",
        "gauge",
        "Most worker processes ever busy at once.",
    ),
    (
        "max children reached",
        "max_children_reached",
        "counter",
        "Times every worker was busy at max_workers.",
    ),
    (
        "slow requests",
        "slow_requests",
        "counter",
        "Requests slower than the slow-log threshold.",
    ),
];

fn text_name(name: &str) -> &str {
    TEXT_NAMES
        .iter()
        .find(|(json, _)| *json == name)
        .map_or(name, |(_, text)| text)
}

/// A value as text and HTML show it.
fn shown(name: &str, cell: &Cell) -> String {
    match cell {
        Cell::Unsigned(secs) if DATES.contains(&name) => {
            fpm_time(UNIX_EPOCH + Duration::from_secs(*secs))
        }
        cell => cell.to_string(),
    }
}

/// The page's own values, without its lists.
fn scalars(fields: &Fields) -> impl Iterator<Item = (&'static str, &Cell)> {
    fields
        .iter()
        .filter(|(_, cell)| !matches!(cell, Cell::List(_) | Cell::Struct(_)))
        .map(|(name, cell)| (*name, cell))
}

/// The lists of structs in the page (the processes), by name.
fn lists(fields: &Fields) -> impl Iterator<Item = (&'static str, Vec<&Fields>)> {
    fields.iter().filter_map(|(name, cell)| match cell {
        Cell::List(items) => Some((
            *name,
            items
                .iter()
                .filter_map(|item| match item {
                    Cell::Struct(fields) => Some(fields),
                    _ => None,
                })
                .collect(),
        )),
        _ => None,
    })
}

fn cell_named<'f>(fields: &'f Fields, name: &str) -> Option<&'f Cell> {
    fields.iter().find(|(n, _)| *n == name).map(|(_, c)| c)
}

/// php-fpm's default page: "name:" padded, then the value; a block per
/// process after a row of stars.
pub fn text(page: &PoolPage) -> String {
    fn lines(out: &mut String, fields: &Fields) {
        for (name, cell) in scalars(fields) {
            let label = format!("{}:", text_name(name));
            let _ = writeln!(out, "{label:<21} {}", shown(name, cell));
        }
    }
    let fields = fields(page);
    let mut out = String::new();
    lines(&mut out, &fields);
    for (_, items) in lists(&fields) {
        for item in items {
            out.push_str("\n************************\n");
            lines(&mut out, item);
        }
    }
    out
}

/// Text for XML and HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// php-fpm's `?xml`: a tag per field, spaces as dashes; a `<processes>`
/// element with a `<process>` per process.
pub fn xml(page: &PoolPage) -> String {
    fn tags(out: &mut String, fields: &Fields, separator: &str) {
        for (name, cell) in scalars(fields) {
            let tag = name.replace(' ', "-");
            let _ = write!(
                out,
                "<{tag}>{}</{tag}>{separator}",
                escape(&cell.to_string())
            );
        }
    }
    let fields = fields(page);
    let mut out = String::from("<?xml version=\"1.0\" ?>\n<status>\n");
    tags(&mut out, &fields, "\n");
    for (name, items) in lists(&fields) {
        let item_tag = XML_ITEMS
            .iter()
            .find(|(list, _)| *list == name)
            .map_or("item", |(_, item)| item);
        let _ = writeln!(out, "<{name}>");
        for item in items {
            let _ = write!(out, "<{item_tag}>");
            tags(&mut out, item, "");
            let _ = writeln!(out, "</{item_tag}>");
        }
        let _ = writeln!(out, "</{name}>");
    }
    out.push_str("</status>\n");
    out
}

/// A page for people: the pool's fields in a table, then a row per process
/// (coloured by state); it refreshes every 2 s.
pub fn html(page: &PoolPage) -> String {
    let columns = fields(&ProcessPage::default());
    let fields = fields(page);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>tqserver status: {name}</title><style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}\
table{{border-collapse:collapse;margin-bottom:1.5rem}}th,td{{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}}\
th{{background:#f0f3f7}}.Running{{background:#fff3cd}}.Idle{{background:#e7f5e9}}</style></head><body>\
<h1>Pool {name}</h1><table>",
        name = escape(&page.pool)
    );
    for (name, cell) in scalars(&fields) {
        let _ = write!(
            out,
            "<tr><th>{}</th><td>{}</td></tr>",
            text_name(name),
            escape(&shown(name, cell))
        );
    }
    out.push_str("</table>");
    for (_, items) in lists(&fields) {
        out.push_str("<h2>Processes</h2><table><tr>");
        for (name, _) in scalars(&columns) {
            let _ = write!(out, "<th>{}</th>", text_name(name));
        }
        out.push_str("</tr>");
        for item in items {
            let state = cell_named(item, "state").map(Cell::to_string);
            let _ = write!(
                out,
                "<tr class=\"{}\">",
                escape(state.as_deref().unwrap_or(""))
            );
            for (name, cell) in scalars(item) {
                let _ = write!(out, "<td>{}</td>", escape(&shown(name, cell)));
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

/// php-fpm's `?openmetrics` series, named `phpfpm_*`.
pub fn openmetrics(page: &PoolPage) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: &Cell| {
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = write!(
            out,
            "# HELP phpfpm_{name} {help}\n# TYPE phpfpm_{name} {kind}\nphpfpm_{name}{suffix} {value}\n",
        );
    };
    metric(
        "up",
        "gauge",
        "Whether the pool can be reached.",
        &Cell::Unsigned(1),
    );
    for (field, cell) in scalars(&fields(page)) {
        if let Some((_, name, kind, help)) = OPENMETRICS.iter().find(|(f, ..)| *f == field) {
            metric(name, kind, help, cell);
        }
    }
    out.push_str("# EOF\n");
    out
}
