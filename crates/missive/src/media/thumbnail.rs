//! Thumbnails of local images: made on first request in the nearest of the spec's
//! recommended sizes, then kept, content-addressed like media.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::{Media, StoredMedia, io_error};
use crate::error::{Error, Result};

/// How a thumbnail fits the size asked: cut to fill it, or scaled to fit inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Crop,
    Scale,
}

impl ThumbnailMethod {
    fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// The sizes thumbnails are made in (the spec's recommended set): a request gets the
/// smallest of its method at least as large as asked, else the largest, so that a few
/// files serve every client.
const THUMBNAIL_SIZES: [(u32, u32, ThumbnailMethod); 5] = [
    (32, 32, ThumbnailMethod::Crop),
    (96, 96, ThumbnailMethod::Crop),
    (320, 240, ThumbnailMethod::Scale),
    (640, 480, ThumbnailMethod::Scale),
    (800, 600, ThumbnailMethod::Scale),
];

/// Largest image decoded for a thumbnail: beyond, a small file could ask for gigabytes.
const THUMBNAIL_MAX_PIXELS_SIDE: u32 = 12_000;
const THUMBNAIL_MAX_ALLOC: u64 = 512 * 1024 * 1024;

impl Media {
    /// A thumbnail of a local image: made on first request in the nearest standard size,
    /// then kept (content-addressed like media). Media that is not an image a thumbnail
    /// can be made of is `M_UNKNOWN`.
    pub async fn thumbnail(
        &self,
        server_name: &str,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> Result<StoredMedia> {
        let original = self.get(server_name, media_id).await?;
        let sizes: Vec<(u32, u32, ThumbnailMethod)> =
            THUMBNAIL_SIZES.iter().filter(|(_, _, m)| *m == method).copied().collect();
        let (w, h, _) = sizes
            .iter()
            .find(|(w, h, _)| *w >= width && *h >= height)
            .or(sizes.last())
            .copied()
            .expect("both methods have sizes");
        if let Some((sha256, content_type, size)) =
            self.store.thumbnail(server_name, media_id, (w, h), method.as_str()).await?
        {
            let path = self.content_path(&sha256);
            return Ok(StoredMedia {
                path,
                sha256,
                size: size as u64,
                content_type: Some(content_type),
                filename: None,
            });
        }
        let source = original.path.clone();
        let (bytes, content_type) = tokio::task::spawn_blocking(move || make_thumbnail(&source, w, h, method))
            .await
            .map_err(|e| Error::Internal(format!("thumbnail task: {e}")))??;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let dest = self.content_path(&sha256);
        if !tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            let tmp = self.temp_file();
            let path = tmp.0.clone().expect("just set");
            tokio::fs::write(&path, &bytes).await.map_err(|e| io_error("write a thumbnail", &e))?;
            self.place(tmp, &sha256).await?;
        }
        let size = bytes.len() as i64;
        self.store
            .insert_thumbnail(server_name, media_id, (w, h), method.as_str(), &sha256, content_type, size)
            .await?;
        Ok(StoredMedia {
            path: dest,
            sha256,
            size: size as u64,
            content_type: Some(content_type.to_owned()),
            filename: None,
        })
    }
}

/// Decodes an image (bounded in size and memory) and makes its thumbnail: never larger
/// than the original; PNG where the image has transparency, JPEG otherwise.
fn make_thumbnail(path: &Path, width: u32, height: u32, method: ThumbnailMethod) -> Result<(Vec<u8>, &'static str)> {
    let cannot = || Error::Unknown("this media is not an image a thumbnail can be made of".into());
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| io_error("read a media file", &e))?
        .with_guessed_format()
        .map_err(|e| io_error("read a media file", &e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(THUMBNAIL_MAX_PIXELS_SIDE);
    limits.max_image_height = Some(THUMBNAIL_MAX_PIXELS_SIDE);
    limits.max_alloc = Some(THUMBNAIL_MAX_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|_| cannot())?;
    let fits = image.width() <= width && image.height() <= height;
    let thumbnail = match method {
        _ if fits => image,
        ThumbnailMethod::Scale => image.resize(width, height, image::imageops::FilterType::Triangle),
        ThumbnailMethod::Crop => image.resize_to_fill(width, height, image::imageops::FilterType::Triangle),
    };
    let mut out = std::io::Cursor::new(Vec::new());
    if thumbnail.color().has_alpha() {
        thumbnail.write_to(&mut out, image::ImageFormat::Png).map_err(|_| cannot())?;
        Ok((out.into_inner(), "image/png"))
    } else {
        image::DynamicImage::ImageRgb8(thumbnail.to_rgb8())
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .map_err(|_| cannot())?;
        Ok((out.into_inner(), "image/jpeg"))
    }
}
