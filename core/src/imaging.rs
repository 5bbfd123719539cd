//! Decoding X-ray images (JPEG, PNG 8/16-bit, TIFF 16-bit) to grayscale, keeping the bit
//! depth, with EXIF orientation applied so that pixel coordinates and boxes are those a
//! viewer shows.
//!
//! Two failure modes of general-purpose decoders are closed here:
//! - a truncated JPEG decodes "successfully" into a half-grey image in lenient decoders
//!   (the `image` crate's JPEG path is lenient), so JPEG streams are walked marker by marker
//!   first and refused when they end before the end-of-image marker;
//! - a header that claims a huge image would allocate before anything else fails, so the
//!   pixel count is checked against [`DecodeOptions::max_pixels`] from the header alone.

use image::metadata::Orientation;
use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Luma};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// 8-bit grayscale pixels.
pub type Gray8 = ImageBuffer<Luma<u8>, Vec<u8>>;
/// 16-bit grayscale pixels.
pub type Gray16 = ImageBuffer<Luma<u16>, Vec<u16>>;

/// Grayscale pixels at the depth they were stored with.
#[derive(Clone, Debug, PartialEq)]
pub enum GrayPixels {
    /// 8 bits per pixel.
    U8(Gray8),
    /// 16 bits per pixel (12-bit detectors store into these too).
    U16(Gray16),
}

/// A decoded grayscale X-ray in display orientation.
#[derive(Clone, Debug, PartialEq)]
pub struct XrayImage {
    pixels: GrayPixels,
    significant_bits: u8,
    /// The size as stored (in display orientation), where the pixels were decoded at a
    /// reduced scale ([`DecodeOptions::reduce_to`]); `None` when they are the full image.
    full_size: Option<(u32, u32)>,
    /// How coloured the source was ([`XrayImage::colour`]); 0 for a grey source.
    colour: f32,
}

impl XrayImage {
    /// An 8-bit image.
    pub fn from_gray8(pixels: Gray8) -> Self {
        XrayImage {
            pixels: GrayPixels::U8(pixels),
            significant_bits: 8,
            full_size: None,
            colour: 0.0,
        }
    }

    /// A 16-bit image whose values use the low `significant_bits` bits (16 for PNG/TIFF,
    /// the DICOM `BitsStored` for DICOM). Values are not checked against that range:
    /// [`XrayImage::max_value`] only sets the scale for normalization.
    pub fn from_gray16(pixels: Gray16, significant_bits: u8) -> Self {
        XrayImage {
            pixels: GrayPixels::U16(pixels),
            significant_bits: significant_bits.clamp(1, 16),
            full_size: None,
            colour: 0.0,
        }
    }

    /// The pixels.
    pub fn pixels(&self) -> &GrayPixels {
        &self.pixels
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        match &self.pixels {
            GrayPixels::U8(p) => p.width(),
            GrayPixels::U16(p) => p.width(),
        }
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        match &self.pixels {
            GrayPixels::U8(p) => p.height(),
            GrayPixels::U16(p) => p.height(),
        }
    }

    /// Width of the full image: [`XrayImage::width`] unless decoded at a reduced scale.
    /// Boxes and geometry are in these pixels.
    pub fn full_width(&self) -> u32 {
        self.full_size.map_or_else(|| self.width(), |(w, _)| w)
    }

    /// Height of the full image: [`XrayImage::height`] unless decoded at a reduced scale.
    pub fn full_height(&self) -> u32 {
        self.full_size.map_or_else(|| self.height(), |(_, h)| h)
    }

    /// How coloured the source was: the mean over its pixels of the spread between its
    /// brightest and darkest channel, 0–1. A radiograph is grey (0, or JPEG's chroma noise
    /// in a grey image stored as colour); a photograph or a colour Doppler frame is not. The
    /// pixels here are grey either way.
    pub fn colour(&self) -> f32 {
        self.colour
    }

    /// Whether these pixels are a reduced-scale decode (enough for a model, not for an
    /// overlay a person looks at).
    pub fn is_reduced(&self) -> bool {
        self.full_size.is_some()
    }

    /// Bits per stored sample: 8 or 16.
    pub fn container_bits(&self) -> u8 {
        match &self.pixels {
            GrayPixels::U8(_) => 8,
            GrayPixels::U16(_) => 16,
        }
    }

    /// Bits that carry signal.
    pub fn significant_bits(&self) -> u8 {
        self.significant_bits
    }

    /// The value that maps to white: `2^significant_bits - 1`.
    pub fn max_value(&self) -> f32 {
        ((1u32 << self.significant_bits) - 1) as f32
    }

    /// An 8-bit copy for display, overlays and the models' input (16-bit values are scaled
    /// down by their significant bits and rounded).
    pub fn to_gray8(&self) -> Gray8 {
        match &self.pixels {
            GrayPixels::U8(p) => p.clone(),
            GrayPixels::U16(p) => {
                let scale = 255.0 / self.max_value();
                let levels = p
                    .as_raw()
                    .iter()
                    // `+ 0.5` then the saturating cast: round-half-up for these non-negative
                    // values, which vectorises where `round()` is a call per sample.
                    .map(|&v| (f32::from(v) * scale + 0.5) as u8)
                    .collect();
                Gray8::from_raw(p.width(), p.height(), levels)
                    .expect("one level per sample of a whole image")
            }
        }
    }

    /// This image at 8 bits ([`XrayImage::to_gray8`]), its full size and colour kept: what a
    /// reader whose models all read 8 bits narrows once, not once per model.
    pub fn narrowed(&self) -> XrayImage {
        XrayImage {
            pixels: GrayPixels::U8(self.to_gray8()),
            significant_bits: 8,
            full_size: self.full_size,
            colour: self.colour,
        }
    }

    /// This image's levels stored at `bits` (9 to 16): each 8-bit level scaled to the deeper
    /// range and rounded, the same picture as a deeper detector delivers it.
    /// [`XrayImage::to_gray8`] gives the 8-bit levels back exactly.
    pub fn widened(&self, bits: u8) -> XrayImage {
        let bits = bits.clamp(9, 16);
        let scale = f32::from(u16::MAX >> (16 - bits)) / 255.0;
        let g = self.to_gray8();
        let levels = g
            .as_raw()
            .iter()
            .map(|&v| (f32::from(v) * scale + 0.5) as u16)
            .collect();
        XrayImage {
            pixels: GrayPixels::U16(
                Gray16::from_raw(g.width(), g.height(), levels)
                    .expect("one level per sample of a whole image"),
            ),
            significant_bits: bits,
            full_size: self.full_size,
            colour: self.colour,
        }
    }
}

/// The container format a file was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// JPEG (baseline or progressive).
    Jpeg,
    /// PNG.
    Png,
    /// TIFF.
    Tiff,
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SourceFormat::Jpeg => "JPEG",
            SourceFormat::Png => "PNG",
            SourceFormat::Tiff => "TIFF",
        })
    }
}

impl SourceFormat {
    fn image_format(self) -> ImageFormat {
        match self {
            SourceFormat::Jpeg => ImageFormat::Jpeg,
            SourceFormat::Png => ImageFormat::Png,
            SourceFormat::Tiff => ImageFormat::Tiff,
        }
    }

    fn from_image(format: ImageFormat) -> Option<Self> {
        match format {
            ImageFormat::Jpeg => Some(SourceFormat::Jpeg),
            ImageFormat::Png => Some(SourceFormat::Png),
            ImageFormat::Tiff => Some(SourceFormat::Tiff),
            _ => None,
        }
    }
}

/// Limits applied while decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Images with more pixels than this are refused from their header, before their pixels
    /// are allocated. Default: 100 megapixels.
    pub max_pixels: u64,
    /// Files larger than this are refused from their size, before a byte is read.
    /// Default: 1 GiB.
    pub max_file_bytes: u64,
    /// Where set, a JPEG is decoded at 1/2, 1/4 or 1/8 scale in the DCT, the smallest scale
    /// that keeps the sides the models need, so that a 2304×2880 radiograph is not decoded
    /// whole to be averaged down to 224 pixels. `None` (the default): full size, as
    /// training and overlays need.
    pub reduce_to: Option<MinSides>,
}

/// The smallest decoded image the models can take without upsampling: a stretched input
/// needs both sides, a letterboxed one its longer side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinSides {
    /// The decoded image's shorter side is at least this.
    pub shorter: u32,
    /// The decoded image's longer side is at least this.
    pub longer: u32,
}

impl MinSides {
    /// Both constraints: the larger of each.
    pub fn max(self, other: MinSides) -> MinSides {
        MinSides {
            shorter: self.shorter.max(other.shorter),
            longer: self.longer.max(other.longer),
        }
    }
}

impl DecodeOptions {
    /// The default pixel limit: 100 megapixels, well above the largest detector panels
    /// (43×43 cm at 100 µm is about 18 MP) and well below what exhausts a Jetson's memory.
    pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;
    /// The default file limit: 1 GiB, some 25 times an uncompressed 16-bit 18 MP radiograph,
    /// and well below a Jetson's memory.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

    /// The defaults with another pixel limit.
    pub fn with_max_pixels(max_pixels: u64) -> Self {
        DecodeOptions {
            max_pixels,
            ..Self::default()
        }
    }
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            reduce_to: None,
        }
    }
}

/// The DCT scale denominator (1, 2, 4 or 8) for a `width`×`height` image that must keep
/// `need`.
pub fn jpeg_scale(width: u32, height: u32, need: MinSides) -> u32 {
    let (short, long) = (width.min(height), width.max(height));
    [8, 4, 2]
        .into_iter()
        .find(|&k| {
            short.div_ceil(k) >= need.shorter.max(1) && long.div_ceil(k) >= need.longer.max(1)
        })
        .unwrap_or(1)
}

/// What the header of an image file says, read without decoding the pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Container format.
    pub format: SourceFormat,
    /// Width as stored, before EXIF orientation.
    pub stored_width: u32,
    /// Height as stored, before EXIF orientation.
    pub stored_height: u32,
    /// EXIF orientation, 1 (none) to 8.
    pub exif_orientation: u8,
}

impl ImageHeader {
    /// Whether EXIF orientation changes the pixels a viewer shows.
    pub fn is_reoriented(&self) -> bool {
        self.exif_orientation != 1
    }

    /// Width and height as a viewer shows them, after EXIF orientation.
    pub fn display_size(&self) -> (u32, u32) {
        if matches!(self.exif_orientation, 5..=8) {
            (self.stored_height, self.stored_width)
        } else {
            (self.stored_width, self.stored_height)
        }
    }

    /// Pixel count.
    pub fn pixel_count(&self) -> u64 {
        self.stored_width as u64 * self.stored_height as u64
    }
}

/// A decoded image with what its header said.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// The pixels in display orientation.
    pub image: XrayImage,
    /// Format, stored size and EXIF orientation, as read before decoding.
    pub header: ImageHeader,
}

/// Why an image could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path}: the file is empty (0 bytes); it was probably still being written or the transfer failed")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Not a format we read.
    #[error("{path}: unsupported image format ({detail}); send DICOM, PNG, TIFF or JPEG")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file ends early.
    #[error("{path}: truncated {format} file: {detail}; the transfer was cut short, send the image again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The container format.
        format: SourceFormat,
        /// Where it ends.
        detail: String,
    },
    /// The file is larger than allowed.
    #[error("{path}: a file of {bytes} bytes exceeds the limit of {max_file_bytes} bytes; raise `max_input_bytes` if this size is genuine")]
    FileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least this many bytes).
        bytes: u64,
        /// The limit in force.
        max_file_bytes: u64,
    },
    /// Not a regular file (a device, a pipe, a directory, a link where links are refused).
    #[error("{path}: not a regular file ({what}); fv-edge reads regular files only")]
    NotAFile {
        /// The file that is not one.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The image is larger than allowed.
    #[error("{path}: image of {width}×{height} pixels exceeds the limit of {max_pixels} pixels; raise `max_pixels` if this size is genuine")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit in force.
        max_pixels: u64,
    },
    /// The decoder refused the data.
    #[error("{path}: corrupt {format} data: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The container format.
        format: SourceFormat,
        /// The decoder's error.
        source: image::ImageError,
    },
}

impl DecodeError {
    /// A stable, machine-readable code for result messages and quarantine records.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Io { .. } => "io",
            DecodeError::Empty { .. } => "empty",
            DecodeError::Unsupported { .. } => "unsupported_format",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::TooLarge { .. } | DecodeError::FileTooLarge { .. } => "too_large",
            DecodeError::NotAFile { .. } => "not_a_file",
            DecodeError::Corrupt { .. } => "corrupt",
        }
    }

    /// A stream a decoder refused, in our words rather than a decoder's error type.
    fn corrupt(path: &Path, format: SourceFormat, detail: impl Into<String>) -> Self {
        DecodeError::Corrupt {
            path: path.to_owned(),
            format,
            source: image::ImageError::Decoding(image::error::DecodingError::new(
                format.image_format().into(),
                detail.into(),
            )),
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            DecodeError::Io { path, .. }
            | DecodeError::Empty { path }
            | DecodeError::Unsupported { path, .. }
            | DecodeError::Truncated { path, .. }
            | DecodeError::TooLarge { path, .. }
            | DecodeError::FileTooLarge { path, .. }
            | DecodeError::NotAFile { path, .. }
            | DecodeError::Corrupt { path, .. } => path,
        }
    }
}

/// Reads a whole file, at most `max` bytes: its size is checked on the open handle (so a
/// sparse 3 GB file or `/dev/zero` behind the name is refused before anything is
/// allocated), and the read itself is bounded in case the file grows meanwhile. With
/// `follow_links` false a symbolic link is refused too.
pub fn read_bounded(path: &Path, max: u64, follow_links: bool) -> Result<Vec<u8>, DecodeError> {
    use std::io::Read as _;
    let io = |source| DecodeError::Io {
        path: path.to_owned(),
        source,
    };
    if !follow_links {
        let m = std::fs::symlink_metadata(path).map_err(io)?;
        if m.file_type().is_symlink() {
            return Err(DecodeError::NotAFile {
                path: path.to_owned(),
                what: "a symbolic link",
            });
        }
    }
    let f = std::fs::File::open(path).map_err(io)?;
    let m = f.metadata().map_err(io)?;
    if !m.is_file() {
        return Err(DecodeError::NotAFile {
            path: path.to_owned(),
            what: if m.is_dir() {
                "a directory"
            } else {
                "a device, pipe or socket"
            },
        });
    }
    let too_large = |bytes| DecodeError::FileTooLarge {
        path: path.to_owned(),
        bytes,
        max_file_bytes: max,
    };
    if m.len() > max {
        return Err(too_large(m.len()));
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    f.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Reads (bounded by `options.max_file_bytes`) and decodes an image file.
pub fn decode_file(path: &Path, options: &DecodeOptions) -> Result<Decoded, DecodeError> {
    let bytes = read_bounded(path, options.max_file_bytes, true)?;
    decode_bytes(&bytes, path, options)
}

/// Reads only what is needed to describe an image file: format, size, orientation, and for
/// JPEG whether the stream is complete. Pixels are not decoded.
pub fn inspect_file(path: &Path) -> Result<ImageHeader, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io {
        path: path.to_owned(),
        source,
    })?;
    inspect_bytes(&bytes, path)
}

/// [`inspect_file`] for an image already in memory; `path` names it in errors.
pub fn inspect_bytes(bytes: &[u8], path: &Path) -> Result<ImageHeader, DecodeError> {
    let (header, _) = open_decoder(bytes, path, u64::MAX)?;
    Ok(header)
}

/// Decodes an image held in memory; `path` names it in errors.
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    options: &DecodeOptions,
) -> Result<Decoded, DecodeError> {
    let (header, decoder) = open_decoder(bytes, path, options.max_pixels)?;
    let format = header.format;
    let corrupt = |source| DecodeError::Corrupt {
        path: path.to_owned(),
        format,
        source,
    };
    let scale = match options.reduce_to {
        Some(need) if format == SourceFormat::Jpeg => {
            jpeg_scale(header.stored_width, header.stored_height, need)
        }
        _ => 1,
    };
    let mut dynamic = if scale > 1 {
        jpeg_scaled(bytes, path, &header, scale)?
    } else {
        DynamicImage::from_decoder(decoder).map_err(corrupt)?
    };
    if let Some(orientation) = Orientation::from_exif(header.exif_orientation) {
        dynamic.apply_orientation(orientation);
    }
    let colour = colourfulness(&dynamic);
    let mut image = match dynamic {
        DynamicImage::ImageLuma8(p) => XrayImage::from_gray8(p),
        DynamicImage::ImageLuma16(p) => XrayImage::from_gray16(p, 16),
        ref d if is_16_bit(d) => XrayImage::from_gray16(d.to_luma16(), 16),
        d => XrayImage::from_gray8(d.to_luma8()),
    };
    image.colour = colour;
    if scale > 1 {
        image.full_size = Some(header.display_size());
    }
    Ok(Decoded { image, header })
}

/// A JPEG decoded at 1/`scale` by jpeg-decoder's reduced inverse DCT: each 8×8 block
/// becomes 8/`scale` pixels a side, so the entropy decoding is all that is done at full
/// size. The stream was checked for truncation by [`open_decoder`].
fn jpeg_scaled(
    bytes: &[u8],
    path: &Path,
    header: &ImageHeader,
    scale: u32,
) -> Result<DynamicImage, DecodeError> {
    let corrupt = |detail: String| DecodeError::corrupt(path, SourceFormat::Jpeg, detail);
    let mut d = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    d.read_info().map_err(|e| corrupt(e.to_string()))?;
    let (w, h) = (
        header.stored_width.div_ceil(scale),
        header.stored_height.div_ceil(scale),
    );
    // jpeg-decoder takes the smallest scale that reaches the request on one axis: asked
    // for exactly 1/scale of both, that is 1/scale.
    let (dw, dh) = d
        .scale(w as u16, h as u16)
        .map_err(|e| corrupt(e.to_string()))?;
    let pixels = d.decode().map_err(|e| corrupt(e.to_string()))?;
    let info = d
        .info()
        .ok_or_else(|| corrupt("no frame header after decoding".into()))?;
    let (dw, dh) = (dw as u32, dh as u32);
    let n = pixels.len();
    let short = || corrupt(format!("{n} bytes of pixels for {dw}×{dh}"));
    use jpeg_decoder::PixelFormat as P;
    Ok(match info.pixel_format {
        P::L8 => DynamicImage::ImageLuma8(ImageBuffer::from_raw(dw, dh, pixels).ok_or_else(short)?),
        P::L16 => {
            // jpeg-decoder gives 16-bit samples big-endian.
            let v = pixels
                .chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect();
            DynamicImage::ImageLuma16(ImageBuffer::from_raw(dw, dh, v).ok_or_else(short)?)
        }
        P::RGB24 => {
            DynamicImage::ImageRgb8(ImageBuffer::from_raw(dw, dh, pixels).ok_or_else(short)?)
        }
        P::CMYK32 => {
            return Err(DecodeError::Unsupported {
                path: path.to_owned(),
                detail: "CMYK JPEG".into(),
            })
        }
    })
}

/// [`XrayImage::colour`] of a decoded image, from every fourth pixel of every fourth row.
fn colourfulness(d: &DynamicImage) -> f32 {
    if !d.color().has_color() {
        return 0.0;
    }
    let rgb = d.to_rgb8();
    let (mut sum, mut n) = (0u64, 0u64);
    for y in (0..rgb.height()).step_by(4) {
        for x in (0..rgb.width()).step_by(4) {
            let [r, g, b] = rgb.get_pixel(x, y).0;
            sum += u64::from(r.max(g).max(b) - r.min(g).min(b));
            n += 1;
        }
    }
    sum as f32 / (255.0 * n.max(1) as f32)
}

fn is_16_bit(d: &DynamicImage) -> bool {
    matches!(
        d,
        DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_)
            | DynamicImage::ImageRgb32F(_)
            | DynamicImage::ImageRgba32F(_)
    )
}

/// Checks everything that can be checked before pixels are allocated and returns a decoder
/// ready to run.
fn open_decoder<'a>(
    bytes: &'a [u8],
    path: &Path,
    max_pixels: u64,
) -> Result<(ImageHeader, impl ImageDecoder + 'a), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty {
            path: path.to_owned(),
        });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| DecodeError::Io {
            path: path.to_owned(),
            source,
        })?;
    let Some(image_format) = reader.format() else {
        return Err(DecodeError::Unsupported {
            path: path.to_owned(),
            detail: format!("unrecognised content starting with {}", hex_prefix(bytes)),
        });
    };
    let Some(format) = SourceFormat::from_image(image_format) else {
        return Err(DecodeError::Unsupported {
            path: path.to_owned(),
            detail: format!("{image_format:?}"),
        });
    };
    if format == SourceFormat::Jpeg {
        if let JpegEnd::Truncated(detail) = jpeg_end(bytes) {
            return Err(DecodeError::Truncated {
                path: path.to_owned(),
                format,
                detail,
            });
        }
    }
    let corrupt = |source: image::ImageError| match source {
        image::ImageError::IoError(ref e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DecodeError::Truncated {
                path: path.to_owned(),
                format,
                detail: e.to_string(),
            }
        }
        source => DecodeError::Corrupt {
            path: path.to_owned(),
            format,
            source,
        },
    };
    let mut reader = reader;
    // Our own pixel limit is checked below, from the header; this one only stops the
    // decoders' internal allocations from running away on a lying header.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => DecodeError::TooLarge {
            path: path.to_owned(),
            width: 0,
            height: 0,
            max_pixels,
        },
        e => corrupt(e),
    })?;
    let (stored_width, stored_height) = decoder.dimensions();
    if stored_width as u64 * stored_height as u64 > max_pixels {
        return Err(DecodeError::TooLarge {
            path: path.to_owned(),
            width: stored_width,
            height: stored_height,
            max_pixels,
        });
    }
    if stored_width == 0 || stored_height == 0 {
        return Err(DecodeError::corrupt(
            path,
            format,
            "the header gives a zero width or height",
        ));
    }
    // A broken EXIF block must not cost the image: the orientation falls back to none.
    let exif_orientation = decoder
        .orientation()
        .map(|o| o.to_exif())
        .unwrap_or(1)
        .clamp(1, 8);
    let header = ImageHeader {
        format,
        stored_width,
        stored_height,
        exif_orientation,
    };
    Ok((header, decoder))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a JPEG stream ends.
#[derive(Debug, PartialEq, Eq)]
pub enum JpegEnd {
    /// The end-of-image marker was found; the value is the offset just past it.
    Complete(usize),
    /// The data ends before the end-of-image marker.
    Truncated(String),
    /// The marker structure is not what we expected; the decoder has the last word.
    Unparsed,
}

/// Walks a JPEG stream's markers and entropy-coded segments to its end-of-image marker.
///
/// Lenient decoders fill a cut-off scan with grey and report success, which would let a
/// truncated upload reach a model as a plausible-looking image; this walk is what tells.
/// An embedded EXIF thumbnail's end marker sits inside an APP1 segment, which is skipped
/// by length, so it is not mistaken for the image's end.
pub fn jpeg_end(bytes: &[u8]) -> JpegEnd {
    let len = bytes.len();
    let cut = |what: &str| JpegEnd::Truncated(format!("the data ends at byte {len} {what}"));
    if len < 2 || bytes[0] != 0xFF || bytes[1] != 0xD8 {
        return JpegEnd::Unparsed;
    }
    let mut i = 2;
    loop {
        if i >= len {
            return cut("before the end-of-image marker");
        }
        if bytes[i] != 0xFF {
            return JpegEnd::Unparsed;
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        while i < len && bytes[i] == 0xFF {
            i += 1;
        }
        if i >= len {
            return cut("inside a marker");
        }
        let marker = bytes[i];
        i += 1;
        match marker {
            0xD9 => return JpegEnd::Complete(i),
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => return JpegEnd::Unparsed,
            _ => {
                if i + 2 > len {
                    return cut("inside a segment header");
                }
                let seg_len = u16::from_be_bytes([bytes[i], bytes[i + 1]]) as usize;
                if seg_len < 2 {
                    return JpegEnd::Unparsed;
                }
                if i + seg_len > len {
                    return cut(&format!("inside a segment (marker 0xFF{marker:02X})"));
                }
                i += seg_len;
                if marker == 0xDA {
                    // Entropy-coded data runs to the next marker that is neither a stuffed
                    // zero nor a restart marker.
                    loop {
                        match bytes[i..].iter().position(|&b| b == 0xFF) {
                            None => return cut("inside the compressed image data"),
                            Some(p) => {
                                let at = i + p;
                                match bytes.get(at + 1) {
                                    None => return cut("inside the compressed image data"),
                                    Some(0x00) | Some(0xD0..=0xD7) | Some(0xFF) => i = at + 1,
                                    Some(_) => {
                                        i = at;
                                        break;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), format).unwrap();
        out
    }

    fn gradient8(w: u32, h: u32) -> Gray8 {
        Gray8::from_fn(w, h, |x, y| Luma([((x * 7 + y * 3) % 256) as u8]))
    }

    #[test]
    fn widened_levels_narrow_back_exactly() {
        let every =
            XrayImage::from_gray8(Gray8::from_fn(16, 16, |x, y| Luma([(y * 16 + x) as u8])));
        for bits in 9..=16 {
            let deep = every.widened(bits);
            assert_eq!((deep.container_bits(), deep.significant_bits()), (16, bits));
            let GrayPixels::U16(p) = deep.pixels() else {
                panic!("{bits} bits: expected 16-bit pixels")
            };
            assert_eq!(
                p[(15, 15)][0],
                u16::MAX >> (16 - bits),
                "white at {bits} bits"
            );
            let back = deep.narrowed();
            assert_eq!((back.container_bits(), back.significant_bits()), (8, 8));
            assert_eq!(back.pixels(), every.pixels(), "{bits} bits");
        }
    }

    #[test]
    fn png16_keeps_its_depth() {
        let img = Gray16::from_fn(5, 3, |x, y| Luma([(x * 10000 + y) as u16]));
        let bytes = encode(DynamicImage::ImageLuma16(img.clone()), ImageFormat::Png);
        let d = decode_bytes(&bytes, Path::new("a.png"), &DecodeOptions::default()).unwrap();
        assert_eq!(d.header.format, SourceFormat::Png);
        assert_eq!(d.image.container_bits(), 16);
        assert_eq!(d.image.pixels(), &GrayPixels::U16(img));
    }

    #[test]
    fn tiff16_keeps_its_depth() {
        let img = Gray16::from_fn(4, 6, |x, y| Luma([(x * 4000 + y * 7) as u16]));
        let bytes = encode(DynamicImage::ImageLuma16(img.clone()), ImageFormat::Tiff);
        let d = decode_bytes(&bytes, Path::new("a.tif"), &DecodeOptions::default()).unwrap();
        assert_eq!(d.header.format, SourceFormat::Tiff);
        assert_eq!(d.image.pixels(), &GrayPixels::U16(img));
    }

    #[test]
    fn a_colour_source_is_measured_and_a_grey_one_stored_as_colour_is_not() {
        let grey = image::RgbImage::from_fn(16, 16, |x, _| image::Rgb([x as u8 * 10; 3]));
        let bytes = encode(DynamicImage::ImageRgb8(grey), ImageFormat::Png);
        let d = decode_bytes(&bytes, "grey.png".as_ref(), &DecodeOptions::default()).unwrap();
        assert_eq!(d.image.colour(), 0.0);
        let red = image::RgbImage::from_pixel(16, 16, image::Rgb([200, 20, 20]));
        let bytes = encode(DynamicImage::ImageRgb8(red), ImageFormat::Png);
        let d = decode_bytes(&bytes, "red.png".as_ref(), &DecodeOptions::default()).unwrap();
        assert!((d.image.colour() - 180.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn rgb_png_becomes_gray8() {
        let img = image::RgbImage::from_fn(3, 3, |x, _| image::Rgb([x as u8 * 50; 3]));
        let bytes = encode(DynamicImage::ImageRgb8(img), ImageFormat::Png);
        let d = decode_bytes(&bytes, Path::new("c.png"), &DecodeOptions::default()).unwrap();
        let GrayPixels::U8(p) = d.image.pixels() else {
            panic!("expected 8-bit")
        };
        assert_eq!(p.get_pixel(2, 0)[0], 100);
    }

    #[test]
    fn jpeg_scale_keeps_what_the_models_need() {
        let need = |shorter, longer| MinSides { shorter, longer };
        // A 224 classifier (stretched) and a 320 detector (letterboxed).
        assert_eq!(jpeg_scale(2304, 2880, need(224, 320)), 8);
        assert_eq!(jpeg_scale(2880, 2304, need(224, 320)), 8);
        assert_eq!(jpeg_scale(2304, 2880, need(320, 320)), 4);
        assert_eq!(jpeg_scale(2304, 2880, need(0, 640)), 4);
        assert_eq!(jpeg_scale(2304, 2880, need(1152, 0)), 2);
        assert_eq!(jpeg_scale(2304, 2880, need(1153, 0)), 1);
        assert_eq!(jpeg_scale(373, 454, need(224, 320)), 1);
        assert_eq!(jpeg_scale(100, 100, need(0, 0)), 8);
    }

    #[test]
    fn jpeg_walk_finds_the_end_and_the_cut() {
        let bytes = encode(
            DynamicImage::ImageLuma8(gradient8(64, 48)),
            ImageFormat::Jpeg,
        );
        assert_eq!(jpeg_end(&bytes), JpegEnd::Complete(bytes.len()));
        for cut in [bytes.len() - 1, bytes.len() - 2, bytes.len() / 2, 100, 3] {
            assert!(
                matches!(jpeg_end(&bytes[..cut]), JpegEnd::Truncated(_)),
                "cut at {cut}"
            );
            let err = decode_bytes(
                &bytes[..cut],
                Path::new("cut.jpg"),
                &DecodeOptions::default(),
            )
            .unwrap_err();
            assert_eq!(err.code(), "truncated", "cut at {cut}: {err}");
            assert!(err.to_string().starts_with("cut.jpg: truncated"), "{err}");
        }
    }

    #[test]
    fn truncated_png_is_an_error() {
        let bytes = encode(
            DynamicImage::ImageLuma8(gradient8(64, 64)),
            ImageFormat::Png,
        );
        let err = decode_bytes(
            &bytes[..bytes.len() / 2],
            Path::new("half.png"),
            &DecodeOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err.code(), "truncated" | "corrupt"), "{err}");
        assert!(err.to_string().contains("half.png"));
    }

    #[test]
    fn empty_and_random_bytes_are_errors() {
        let o = DecodeOptions::default();
        assert_eq!(
            decode_bytes(&[], Path::new("z.jpg"), &o)
                .unwrap_err()
                .code(),
            "empty"
        );
        let noise: Vec<u8> = (0..999u32).map(|i| (i * 7919 % 251) as u8).collect();
        let err = decode_bytes(&noise, Path::new("noise.png"), &o).unwrap_err();
        assert_eq!(err.code(), "unsupported_format");
        assert!(err.to_string().contains("noise.png"));
    }

    #[test]
    fn pixel_limit_is_checked_from_the_header() {
        // A real 30000×30000 PNG header over a tiny body: refused before any allocation.
        let mut png = encode(DynamicImage::ImageLuma8(gradient8(8, 8)), ImageFormat::Png);
        png[16..20].copy_from_slice(&30000u32.to_be_bytes());
        png[20..24].copy_from_slice(&30000u32.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode_bytes(&png, Path::new("huge.png"), &DecodeOptions::default()).unwrap_err();
        assert_eq!(err.code(), "too_large", "{err}");

        let small = encode(
            DynamicImage::ImageLuma8(gradient8(20, 10)),
            ImageFormat::Png,
        );
        let tight = DecodeOptions::with_max_pixels(199);
        let err = decode_bytes(&small, Path::new("s.png"), &tight).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::TooLarge {
                width: 20,
                height: 10,
                ..
            }
        ));
        assert!(decode_bytes(
            &small,
            Path::new("s.png"),
            &DecodeOptions::with_max_pixels(200)
        )
        .is_ok());
    }
}
