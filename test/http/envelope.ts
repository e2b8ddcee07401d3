/** Asserts the DESIGN.md 1.8 error envelope and returns its `detail`. Not a test file (tap runs *.test.ts). */
export interface ErrorDetail {
  error: string
  message: string
  [key: string]: unknown
}

export function envelope(body: string): ErrorDetail {
  const parsed = JSON.parse(body) as { detail?: { error?: unknown; message?: unknown } }
  const detail = parsed.detail
  if (!detail || typeof detail.error !== 'string' || typeof detail.message !== 'string') {
    throw new Error(`not an error envelope: ${body}`)
  }
  return detail as ErrorDetail
}
