import { PNG } from 'pngjs';
import type { Tensor } from '../core/types.js';

/** True for a UINT8 tensor of images: [B, H, W, 3|4]. */
export function isImageBatch(tensor: Tensor): boolean {
  return tensor.datatype === 'UINT8' && tensor.shape.length === 4 && (tensor.shape[3] === 3 || tensor.shape[3] === 4);
}

/** Each image of a [B, H, W, 3|4] UINT8 tensor as PNG bytes (RGB or RGBA). */
export function encodePngImages(tensor: Tensor): Buffer[] {
  const [batch, height, width, channels] = tensor.shape;
  const hasAlpha = channels === 4;
  const colorType = hasAlpha ? 6 : 2;
  const imageBytes = height * width * channels;
  return Array.from({ length: batch }, (_, b) => {
    const png = new PNG({ width, height });
    png.data = tensor.data.subarray(b * imageBytes, (b + 1) * imageBytes);
    return PNG.sync.write(png, { colorType, inputColorType: colorType, inputHasAlpha: hasAlpha });
  });
}
