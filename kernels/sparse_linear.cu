// Sparse linear layer y = x @ W^T + b with W in CSR (rows = output features).
// One warp per output row; each lane strides over the row's nonzeros and keeps TILE batch
// rows in registers, so a nonzero's column and value are read once per TILE images.
// Data are float32 values, or codebook indices (uint8 / uint16) looked up in `codebook`.
// Launch: block (32 * WARPS), grid (ceil(rows / WARPS), ceil(batch / TILE)).

#define TILE 8

template <typename T>
__device__ __forceinline__ float weight_of(const T* data, const float* codebook, int k) {
    return codebook[data[k]];
}

template <>
__device__ __forceinline__ float weight_of<float>(const float* data, const float* codebook, int k) {
    return data[k];
}

template <typename T>
__device__ void csr_linear(const float* __restrict__ x,        // (batch, cols)
                           const int* __restrict__ indptr,     // (rows + 1,)
                           const int* __restrict__ indices,    // (nnz,)
                           const T* __restrict__ data,         // (nnz,)
                           const float* __restrict__ codebook, // (K,) or null for float data
                           const float* __restrict__ bias,     // (rows,)
                           float* __restrict__ y,              // (batch, rows)
                           int rows, int cols, int batch) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    int b0 = blockIdx.y * TILE;
    if (warp >= rows) return;
    float acc[TILE];
    for (int t = 0; t < TILE; ++t) acc[t] = 0.0f;
    for (int k = indptr[warp] + lane; k < indptr[warp + 1]; k += 32) {
        int col = indices[k];
        float w = weight_of<T>(data, codebook, k);
        for (int t = 0; t < TILE; ++t) {
            if (b0 + t < batch) acc[t] += w * x[(size_t)(b0 + t) * cols + col];
        }
    }
    for (int t = 0; t < TILE; ++t) {
        float v = acc[t];
        for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
        if (lane == 0 && b0 + t < batch) {
            y[(size_t)(b0 + t) * rows + warp] = v + bias[warp];
        }
    }
}

extern "C" __global__ void csr_linear_f32(const float* x, const int* indptr, const int* indices,
                                          const float* data, const float* codebook,
                                          const float* bias, float* y, int rows, int cols,
                                          int batch) {
    csr_linear<float>(x, indptr, indices, data, codebook, bias, y, rows, cols, batch);
}

extern "C" __global__ void csr_linear_u8(const float* x, const int* indptr, const int* indices,
                                         const unsigned char* data, const float* codebook,
                                         const float* bias, float* y, int rows, int cols,
                                         int batch) {
    csr_linear<unsigned char>(x, indptr, indices, data, codebook, bias, y, rows, cols, batch);
}

extern "C" __global__ void csr_linear_u16(const float* x, const int* indptr, const int* indices,
                                          const unsigned short* data, const float* codebook,
                                          const float* bias, float* y, int rows, int cols,
                                          int batch) {
    csr_linear<unsigned short>(x, indptr, indices, data, codebook, bias, y, rows, cols, batch);
}
