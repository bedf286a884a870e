//! The timeline picture: requests per second and failed requests over time, through the
//! upgrades, ours above the framework's baseline, each upgrade shaded from its `upgrade`
//! command until its old workers had exited.

use std::path::Path;

use graceful_listener_suite::upgrades::{ContenderResult, SAMPLE_EVERY};
use plotters::prelude::*;

use crate::upgrade::Http1Upgrades;

const OK_COLOUR: RGBColor = RGBColor(31, 119, 180);
const FAILED_COLOUR: RGBColor = RGBColor(214, 39, 40);
const UPGRADE_COLOUR: RGBColor = RGBColor(200, 200, 200);

/// Writes the picture of `run` to `path` (SVG).
pub(crate) fn timeline(run: &Http1Upgrades, caption: &str, path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(caption, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let panels = root.split_evenly((2, 1));
    // One scale for both, so that the two rates read the same.
    let top = [&run.ours, &run.baseline]
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.ok_per_s))
        .fold(0.0f64, f64::max)
        * 1.1;
    let failed_top = [&run.ours, &run.baseline]
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.failed))
        .max()
        .unwrap_or(0)
        .max(10) as f64
        * 1.1;
    let end = [&run.ours, &run.baseline]
        .iter()
        .filter_map(|r| r.timeline.last().map(|s| s.t_s))
        .fold(1.0f64, f64::max);
    for (panel, result) in panels.iter().zip([&run.ours, &run.baseline]) {
        panel_of(panel, result, end, top.max(1.0), failed_top)?;
    }
    root.present().map_err(|e| e.to_string())
}

fn panel_of(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    result: &ContenderResult,
    end: f64,
    top: f64,
    failed_top: f64,
) -> Result<(), String> {
    let title = format!(
        "{}: {} requests, {} failed",
        result.title, result.counts.requests, result.counts.failed
    );
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .right_y_label_area_size(50)
        .build_cartesian_2d(0.0..end, 0.0..top)
        .map_err(|e| e.to_string())?
        .set_secondary_coord(0.0..end, 0.0..failed_top);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("seconds")
        .y_desc("requests/s")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .configure_secondary_axes()
        .y_desc(format!("failed per {} ms", SAMPLE_EVERY.as_millis()))
        .draw()
        .map_err(|e| e.to_string())?;
    let shades = result.upgrades.iter().map(|u| {
        let from = u.started_s;
        let to = from + u.old_exited_ms as f64 / 1000.0;
        Rectangle::new([(from, 0.0), (to, top)], UPGRADE_COLOUR.mix(0.5).filled())
    });
    chart
        .draw_series(shades)
        .map_err(|e| e.to_string())?
        .label("upgrade (command to last old worker's exit)")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], UPGRADE_COLOUR.filled()));
    chart
        .draw_series(LineSeries::new(
            result.timeline.iter().map(|s| (s.t_s, s.ok_per_s)),
            OK_COLOUR.stroke_width(2),
        ))
        .map_err(|e| e.to_string())?
        .label("requests/s answered")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], OK_COLOUR.stroke_width(2)));
    chart
        .draw_secondary_series(result.timeline.iter().filter(|s| s.failed > 0).map(|s| {
            PathElement::new(
                [(s.t_s, 0.0), (s.t_s, s.failed as f64)],
                FAILED_COLOUR.stroke_width(3),
            )
        }))
        .map_err(|e| e.to_string())?
        .label("failed requests")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], FAILED_COLOUR.stroke_width(3)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())
}
