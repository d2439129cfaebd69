//! `orch budget`: today's (UTC) agent calls and cost against the limits,
//! per agent and per project, read from the runners' ledger
//! (`STATE_DB_PATH`). Reading never creates the database.

use crate::{CliError, Ctx, print_json};
use artifacts::budget::{self, BudgetConfig};
use serde_json::Value;

pub fn budget(ctx: &Ctx, json: bool) -> Result<u8, CliError> {
    budget::install_test_clock(&ctx.env)?;
    let cfg = BudgetConfig::resolve(&ctx.env)?;
    let report = budget::read_report(&cfg, fsqueue::clock::now_unix()).map_err(|e| {
        CliError::failed(e.to_string()).hint("check STATE_DB_PATH; the runners create the ledger")
    })?;
    if json {
        print_json(&report);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

fn usd(v: &Value) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("${x:.4}"))
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |x| x.to_string())
}

/// The human table.
fn render(r: &Value) -> String {
    let mut out = String::new();
    let limit = |used: String, max: &Value, f: &dyn Fn(&Value) -> String| {
        if max.is_null() {
            format!("{used} (no limit)")
        } else {
            format!("{used} of {}", f(max))
        }
    };
    out.push_str(&format!(
        "budget for {} (UTC){}\n",
        r["day"].as_str().unwrap_or("?"),
        if r["exceeded"] == true {
            " — EXCEEDED"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  calls     {}\n",
        limit(num(&r["calls"]), &r["max_calls"], &num)
    ));
    out.push_str(&format!(
        "  cost      {} + {} reserved\n",
        limit(usd(&r["cost_usd"]), &r["max_cost_usd"], &usd),
        usd(&r["reserved_usd"])
    ));
    out.push_str(&format!(
        "  refused   {} (over budget: {})\n",
        num(&r["refused"]),
        r["action"].as_str().unwrap_or("?")
    ));
    if r["ledger_present"] != true {
        out.push_str(&format!(
            "  ledger    {} (not created yet: no real agent has run)\n",
            r["ledger"].as_str().unwrap_or("?")
        ));
    }
    let empty = Vec::new();
    let agents = r["agents"].as_array().unwrap_or(&empty);
    if !agents.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:>7} {:>12} {:>12} {:>8} {:>10}\n",
            "AGENT", "CALLS", "COST", "RESERVED", "REFUSED", "ESTIMATE"
        ));
        for a in agents {
            out.push_str(&format!(
                "{:<16} {:>7} {:>12} {:>12} {:>8} {:>10}\n",
                a["agent"].as_str().unwrap_or("?"),
                num(&a["calls"]),
                usd(&a["cost_usd"]),
                usd(&a["reserved_usd"]),
                num(&a["refused"]),
                usd(&a["estimate_usd"]),
            ));
        }
    }
    let projects = r["projects"].as_array().unwrap_or(&empty);
    if !projects.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:>7} {:>10} {:>12} {:>12} {:>8}\n",
            "PROJECT", "CALLS", "LIMIT", "COST", "LIMIT", "REFUSED"
        ));
        for p in projects {
            out.push_str(&format!(
                "{:<16} {:>7} {:>10} {:>12} {:>12} {:>8}{}\n",
                p["project"].as_str().unwrap_or("(none)"),
                num(&p["calls"]),
                num(&p["max_calls"]),
                usd(&p["cost_usd"]),
                usd(&p["max_cost_usd"]),
                num(&p["refused"]),
                if p["exceeded"] == true {
                    "  exceeded"
                } else {
                    ""
                }
            ));
        }
    }
    out
}
