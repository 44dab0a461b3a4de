//! QR codes of site URLs as SVG (posters, screens) and PNG (chat apps, printers).

use qrcode::{Color, EcLevel, QrCode};

fn code(data: &str) -> Result<QrCode, String> {
    // Level M survives a smudged or partly covered poster and keeps the code small.
    QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M).map_err(|e| e.to_string())
}

pub fn svg(data: &str, size: u32) -> Result<String, String> {
    Ok(code(data)?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(size, size)
        .quiet_zone(true)
        .build())
}

/// A black-on-white PNG with a four-module quiet zone, each module `scale` pixels.
pub fn png(data: &str, scale: u32) -> Result<Vec<u8>, String> {
    let code = code(data)?;
    let w = code.width() as u32;
    let colors = code.to_colors();
    let quiet = 4;
    let dim = (w + 2 * quiet) * scale;
    let mut pixels = vec![255u8; (dim * dim) as usize];
    for (i, c) in colors.iter().enumerate() {
        if *c == Color::Dark {
            let (mx, my) = (i as u32 % w + quiet, i as u32 / w + quiet);
            for y in my * scale..(my + 1) * scale {
                let row = (y * dim) as usize;
                pixels[row + (mx * scale) as usize..row + ((mx + 1) * scale) as usize].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, dim, dim);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| e.to_string())?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| e.to_string())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn png_is_a_png_of_the_right_size() {
        let p = super::png(
            "http://127.0.0.1:8080/s/0123456789abcdef0123456789abcdef",
            8,
        )
        .unwrap();
        assert_eq!(&p[..8], b"\x89PNG\r\n\x1a\n");
        let svg = super::svg("http://x/s/abc", 256).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    }
}
