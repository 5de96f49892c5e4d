//! Small SVG charts for the bench report, written by hand (no plotting dependency): line
//! charts (optionally with a log10 x axis) and bar charts.

use std::fmt::Write as _;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// Index into the palette, so one thing keeps its colour across charts.
    pub colour: usize,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn header(title: &str, xlabel: &str, ylabel: &str) -> String {
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    let _ = writeln!(s, "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>", W / 2.0, esc(title));
    let _ = writeln!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", LEFT + (W - LEFT - RIGHT) / 2.0, H - 10.0, esc(xlabel));
    let _ = writeln!(s, "<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{}</text>", TOP + (H - TOP - BOTTOM) / 2.0, TOP + (H - TOP - BOTTOM) / 2.0, esc(ylabel));
    let _ = writeln!(s, "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>", W - LEFT - RIGHT, H - TOP - BOTTOM);
    s
}

/// `n` round tick values spanning `lo..=hi`.
fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(t);
        t += step;
    }
    v
}

fn label(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// A line chart; with `log_x` the x values are plotted on a log10 axis.
pub fn lines(title: &str, xlabel: &str, ylabel: &str, series: &[Series], log_x: bool) -> String {
    let fx = |x: f64| if log_x { x.max(1e-9).log10() } else { x };
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64);
    for &(x, y) in pts {
        (x0, x1, y1) = (x0.min(fx(x)), x1.max(fx(x)), y1.max(y));
    }
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.05 } else { 1.0 };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let px = |x: f64| LEFT + (fx(x) - x0) / (x1 - x0) * pw;
    let py = |y: f64| TOP + ph - y / y1 * ph;
    let mut s = header(title, xlabel, ylabel);
    for t in ticks(0.0, y1, 5) {
        let y = py(t);
        let _ = writeln!(s, "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", LEFT + pw, LEFT - 6.0, y + 4.0, label(t));
    }
    let xt = if log_x { (x0.floor() as i32..=x1.ceil() as i32).map(f64::from).filter(|e| *e >= x0 - 1e-9 && *e <= x1 + 1e-9).collect() } else { ticks(x0, x1, 6) };
    for e in xt {
        let (x, text) = if log_x { (LEFT + (e - x0) / (x1 - x0) * pw, label(10f64.powf(e))) } else { (px(e), label(e)) };
        let _ = writeln!(s, "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{text}</text>", TOP + ph, TOP + ph + 16.0);
    }
    for (i, se) in series.iter().enumerate() {
        let c = COLOURS[se.colour % COLOURS.len()];
        let path: Vec<String> = se.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(s, "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>", path.join(" "));
        for p in &path {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(s, "<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"{c}\"/>");
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let _ = writeln!(s, "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>", W - RIGHT + 10.0, W - RIGHT + 30.0, W - RIGHT + 36.0, ly + 4.0, esc(&se.name));
    }
    s.push_str("</svg>\n");
    s
}

/// A bar chart, one bar per (name, colour, value).
pub fn bars(title: &str, ylabel: &str, bars: &[(String, usize, f64)]) -> String {
    let y1 = bars.iter().map(|b| b.2).filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.1;
    let y1 = if y1 > 0.0 { y1 } else { 1.0 };
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let mut s = header(title, "", ylabel);
    for t in ticks(0.0, y1, 5) {
        let y = TOP + ph - t / y1 * ph;
        let _ = writeln!(s, "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>", LEFT + pw, LEFT - 6.0, y + 4.0, label(t));
    }
    let slot = pw / bars.len().max(1) as f64;
    for (i, (name, colour, v)) in bars.iter().enumerate() {
        let v = if v.is_finite() { *v } else { 0.0 };
        let h = v / y1 * ph;
        let x = LEFT + slot * i as f64 + slot * 0.15;
        let _ = writeln!(s, "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>", TOP + ph - h, slot * 0.7, COLOURS[colour % COLOURS.len()]);
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", x + slot * 0.35, TOP + ph - h - 4.0, label(v));
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x + slot * 0.35, TOP + ph + 16.0, esc(name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_one_mark_per_point() {
        let s = vec![
            Series { name: "a<b".into(), colour: 0, points: vec![(1.0, 10.0), (10.0, 20.0), (100.0, 5.0)] },
            Series { name: "c".into(), colour: 1, points: vec![(2.0, 1.0), (f64::NAN, 3.0)] },
        ];
        let svg = lines("t", "x", "y", &s, true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 4, "non-finite points are left out");
        assert!(svg.contains("a&lt;b"));
        let svg = bars("t", "kpps", &[("x".into(), 0, 1.0), ("y".into(), 1, f64::NAN)]);
        assert_eq!(svg.matches("<rect x=").count(), 3, "frame + two bars");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 100.0, 5), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(ticks(0.0, 0.0, 5), vec![0.0]);
    }
}
