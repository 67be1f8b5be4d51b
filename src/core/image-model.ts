import type { CapabilitiesMeta } from '../backend/messages.js';

/** Tasks whose answer is an image. */
const IMAGE_TASKS = new Set(['text_to_image', 'image_to_image', 'inpaint']);

/**
 * Whether a backend declared that it makes images (an image task or an image output): such a
 * model gets the image request limits, the image execution deadline and the image metrics.
 * A model that declares nothing is a plain Triton model.
 */
export function makesImages(capabilities: CapabilitiesMeta | undefined): boolean {
  if (capabilities === undefined) return false;
  return capabilities.image_output !== undefined || capabilities.tasks.some((task) => IMAGE_TASKS.has(task));
}
