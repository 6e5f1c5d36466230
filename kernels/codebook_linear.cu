// Weight-shared linear layer y = x @ codebook[A]^T + b from the index matrix A (out, in) and
// the codebook, without a dense weight anywhere: each 16 x 16 weight tile is decoded from its
// indices into shared memory, next to the matching tile of x, then multiplied.
// The codebook sits in shared memory when it has at most SHARED_CODEBOOK entries (8-bit
// indices and below), else it is read through the read-only cache.
// Launch: block (16, 16), grid (ceil(out / 16), ceil(batch / 16)),
//         shared bytes = 4 * min(K, SHARED_CODEBOOK) (dynamic).

#define T 16
#define SHARED_CODEBOOK 256

template <typename I>
__device__ void codebook_linear(const float* __restrict__ x,        // (batch, in)
                                const I* __restrict__ a,            // (out, in) indices
                                const float* __restrict__ codebook, // (K,)
                                const float* __restrict__ bias,     // (out,)
                                float* __restrict__ y,              // (batch, out)
                                int batch, int in, int out, int k) {
    extern __shared__ float book[];
    __shared__ float xs[T][T + 1];
    __shared__ float ws[T][T + 1];
    bool shared_book = k <= SHARED_CODEBOOK;
    int tid = threadIdx.y * T + threadIdx.x;
    if (shared_book) {
        for (int i = tid; i < k; i += T * T) book[i] = codebook[i];
    }
    __syncthreads();
    int o = blockIdx.x * T + threadIdx.x;  // output feature of this thread
    int b = blockIdx.y * T + threadIdx.y;  // batch row of this thread
    float acc = 0.0f;
    for (int base = 0; base < in; base += T) {
        int xb = blockIdx.y * T + threadIdx.y, xc = base + threadIdx.x;
        xs[threadIdx.y][threadIdx.x] = (xb < batch && xc < in) ? x[(size_t)xb * in + xc] : 0.0f;
        int wo = blockIdx.x * T + threadIdx.y, wc = base + threadIdx.x;
        float w = 0.0f;
        if (wo < out && wc < in) {
            int idx = a[(size_t)wo * in + wc];
            w = shared_book ? book[idx] : __ldg(codebook + idx);
        }
        ws[threadIdx.y][threadIdx.x] = w;  // ws[output][column]
        __syncthreads();
        for (int j = 0; j < T; ++j) acc += xs[threadIdx.y][j] * ws[threadIdx.x][j];
        __syncthreads();
    }
    if (b < batch && o < out) y[(size_t)b * out + o] = acc + bias[o];
}

extern "C" __global__ void codebook_linear_u8(const float* x, const unsigned char* a,
                                              const float* codebook, const float* bias, float* y,
                                              int batch, int in, int out, int k) {
    codebook_linear<unsigned char>(x, a, codebook, bias, y, batch, in, out, k);
}

extern "C" __global__ void codebook_linear_u16(const float* x, const unsigned short* a,
                                               const float* codebook, const float* bias, float* y,
                                               int batch, int in, int out, int k) {
    codebook_linear<unsigned short>(x, a, codebook, bias, y, batch, in, out, k);
}
