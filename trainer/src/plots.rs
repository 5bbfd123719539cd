//! The PNG figures beside `metrics.json`: ROC and precision-recall curves, the reliability
//! diagram, loss curves and the confusion matrix at the `definite` threshold.

use fv_core::metrics::classification::Scored;
use fv_core::metrics::classification::{calibration_bins, pr_curve, roc_curve, Confusion};
use fv_core::Probability;
use plotters::prelude::*;
use std::path::Path;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const SIZE: (u32, u32) = (640, 520);

/// Makes the embedded font (DejaVu Sans) known to plotters, once.
fn fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so registering it cannot meet a missing file.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const COLOURS: [RGBColor; 3] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

pub(crate) fn curves(
    path: &Path,
    title: &str,
    (xd, yd): (&str, &str),
    series: &[(String, Vec<(f64, f64)>)],
    diagonal: bool,
) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(54)
        .build_cartesian_2d(0f64..1f64, 0f64..1.02f64)?;
    chart.configure_mesh().x_desc(xd).y_desc(yd).draw()?;
    if diagonal {
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3)))?;
    }
    for (i, (name, pts)) in series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `roc.png`, `pr.png`, `calibration.png` and `confusion_test.png` (at `definite`) in `dir`,
/// from each split's scored predictions.
pub fn evaluation_plots(
    dir: &Path,
    parts: &[(&str, Vec<Scored>)],
    definite: Probability,
) -> PlotResult {
    let mut roc = Vec::new();
    let mut pr = Vec::new();
    let mut cal = Vec::new();
    for (name, s) in parts {
        if let Some(c) = roc_curve(s) {
            let auc = fv_core::metrics::classification::roc_auc(s).unwrap_or(f64::NAN);
            roc.push((
                format!("{name} (AUC {auc:.3})"),
                c.iter().map(|p| (p.fpr, p.tpr)).collect(),
            ));
        }
        if let Some(c) = pr_curve(s) {
            let ap = fv_core::metrics::classification::average_precision(s).unwrap_or(f64::NAN);
            let mut pts = vec![(0.0, c.first().map_or(1.0, |p| p.precision))];
            pts.extend(c.iter().map(|p| (p.recall, p.precision)));
            pr.push((format!("{name} (AP {ap:.3})"), pts));
        }
        let bins = calibration_bins(s, 10);
        cal.push((
            name.to_string(),
            bins.iter()
                .map(|b| (b.mean_predicted, b.fraction_positive))
                .collect(),
        ));
    }
    curves(
        &dir.join("roc.png"),
        "ROC",
        ("1 - specificity", "sensitivity"),
        &roc,
        true,
    )?;
    curves(
        &dir.join("pr.png"),
        "Precision-recall",
        ("recall (sensitivity)", "precision"),
        &pr,
        false,
    )?;
    curves(
        &dir.join("calibration.png"),
        "Reliability (10 bins)",
        ("mean predicted probability", "fraction fractured"),
        &cal,
        true,
    )?;
    if let Some((name, s)) = parts.iter().find(|(n, _)| *n == "test").or(parts.last()) {
        confusion(
            &dir.join(format!("confusion_{name}.png")),
            name,
            &Confusion::at(s, definite),
            definite,
        )?;
    }
    Ok(())
}

fn confusion(path: &Path, split: &str, c: &Confusion, t: Probability) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, (520, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let text = |s: String, at: (i32, i32), size: u32| -> PlotResult {
        root.draw(&Text::new(s, at, ("sans-serif", size).into_font()))?;
        Ok(())
    };
    text(
        format!("{split}: calls at definite ≥ {:.3}", t.get()),
        (20, 12),
        20,
    )?;
    let (x0, y0, cell) = (170, 80, 160);
    // Rows: true fracture, true no fracture; columns: called fracture, called no fracture.
    let cells = [[c.tp, c.fn_], [c.fp, c.tn]];
    let max = cells.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    for (r, row) in cells.iter().enumerate() {
        for (k, &n) in row.iter().enumerate() {
            let (x, y) = (x0 + k as i32 * cell, y0 + r as i32 * cell);
            let shade = 1.0 - 0.6 * (n as f64 / max);
            let colour = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
            root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                colour.filled(),
            ))?;
            root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], BLACK))?;
            text(n.to_string(), (x + cell / 2 - 18, y + cell / 2 - 18), 36)?;
        }
    }
    text("called fracture".into(), (x0 + 14, y0 - 26), 16)?;
    text("called no fracture".into(), (x0 + cell + 6, y0 - 26), 16)?;
    text("fractured".into(), (20, y0 + cell / 2 - 8), 16)?;
    text("not fractured".into(), (20, y0 + cell + cell / 2 - 8), 16)?;
    root.present()?;
    Ok(())
}

/// `loss.png`: training loss per logged step and validation ROC-AUC per epoch.
pub fn loss_plot(path: &Path, steps: &[(f64, f64)], epoch_auc: &[Option<f64>]) -> PlotResult {
    fonts();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let (upper, lower) = root.split_vertically(SIZE.1 / 2);
    let xmax = steps.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = steps.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&upper)
        .caption("training loss", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    c.configure_mesh().x_desc("step").draw()?;
    c.draw_series(LineSeries::new(
        steps.iter().copied(),
        COLOURS[0].stroke_width(2),
    ))?;
    let n = epoch_auc.len().max(1) as f64;
    let mut c = ChartBuilder::on(&lower)
        .caption("validation ROC-AUC", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.5f64..n + 0.5, 0.4f64..1.0f64)?;
    c.configure_mesh().x_desc("epoch").draw()?;
    let pts: Vec<(f64, f64)> = epoch_auc
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.map(|a| (i as f64 + 1.0, a)))
        .collect();
    c.draw_series(LineSeries::new(
        pts.iter().copied(),
        COLOURS[1].stroke_width(2),
    ))?;
    c.draw_series(pts.iter().map(|p| Circle::new(*p, 4, COLOURS[1].filled())))?;
    root.present()?;
    Ok(())
}
