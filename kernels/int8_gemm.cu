// int8 GEMM with 32-bit accumulation and requantization, bit-exact with int8_gemm.py:
//   acc[m, n] = sum_k (x[m, k] - x_zero) * w[n, k] + bias[n]          (int32)
//   float:  q = rint(float(acc) * multiplier[n])                        (ONNX Runtime / MLAS)
//   fixed:  q = rounding_shift(saturating_doubling_high_mul(acc << left[n], m0[n]), right[n])
//                                                                       (gemmlowp / TFLite)
//   y = clamp(q + y_zero, qmin, qmax)
// x is uint8 (affine activations) or int8 (symmetric), w is int8 (symmetric, zero point 0).
// Every float step uses an explicit round-to-nearest intrinsic, so no FMA contraction or
// fast-math can change a result. Launch: block (16, 16), grid (ceil(N / 16), ceil(M / 16)).

#define T 16

__device__ __forceinline__ int srdhm(int a, int b) {  // SaturatingRoundingDoublingHighMul
    if (a == b && a == (-2147483647 - 1)) return 2147483647;
    long long ab = (long long)a * (long long)b;
    long long nudge = ab >= 0 ? (1LL << 30) : (1 - (1LL << 30));
    return (int)((ab + nudge) / (1LL << 31));  // C division truncates toward zero
}

__device__ __forceinline__ int rounding_shift(int x, int exponent) {  // RoundingDivideByPOT
    int mask = (1 << exponent) - 1;
    int remainder = x & mask;
    int threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

template <typename X>
__device__ void int8_gemm(const X* __restrict__ x,         // (M, K)
                          const signed char* __restrict__ w, // (N, K)
                          const int* __restrict__ bias,     // (N,)
                          const float* __restrict__ multiplier, // (N,) float mode
                          const int* __restrict__ m0,       // (N,) fixed mode
                          const int* __restrict__ left,     // (N,)
                          const int* __restrict__ right,    // (N,)
                          void* __restrict__ y,             // (M, N) int32 / uint8 / int8
                          int M, int N, int K, int x_zero, int y_zero, int mode,
                          int qmin, int qmax) {
    __shared__ int xs[T][T + 1];
    __shared__ int ws[T][T + 1];
    int n = blockIdx.x * T + threadIdx.x;
    int m = blockIdx.y * T + threadIdx.y;
    int acc = 0;
    for (int base = 0; base < K; base += T) {
        int xm = blockIdx.y * T + threadIdx.y, c = base + threadIdx.x;
        xs[threadIdx.y][threadIdx.x] = (xm < M && c < K) ? (int)x[(size_t)xm * K + c] - x_zero : 0;
        int wn = blockIdx.x * T + threadIdx.y;
        ws[threadIdx.y][threadIdx.x] = (wn < N && c < K) ? (int)w[(size_t)wn * K + c] : 0;
        __syncthreads();
        for (int j = 0; j < T; ++j) acc += xs[threadIdx.y][j] * ws[threadIdx.x][j];
        __syncthreads();
    }
    if (m >= M || n >= N) return;
    acc += bias[n];
    size_t at = (size_t)m * N + n;
    if (mode == 0) {  // int32 accumulators out
        ((int*)y)[at] = acc;
        return;
    }
    int q;
    if (mode == 1) {
        q = __float2int_rn(__fmul_rn(__int2float_rn(acc), multiplier[n]));
    } else {
        long long shifted = (long long)acc << left[n];
        shifted = shifted > 2147483647LL ? 2147483647LL : shifted;
        shifted = shifted < -2147483648LL ? -2147483648LL : shifted;
        q = rounding_shift(srdhm((int)shifted, m0[n]), right[n]);
    }
    long long v = (long long)q + y_zero;
    v = v < qmin ? qmin : (v > qmax ? qmax : v);
    if (qmin < 0) ((signed char*)y)[at] = (signed char)v;
    else ((unsigned char*)y)[at] = (unsigned char)v;
}

extern "C" __global__ void int8_gemm_u8(const unsigned char* x, const signed char* w,
                                        const int* bias, const float* multiplier, const int* m0,
                                        const int* left, const int* right, void* y, int M, int N,
                                        int K, int x_zero, int y_zero, int mode, int qmin,
                                        int qmax) {
    int8_gemm<unsigned char>(x, w, bias, multiplier, m0, left, right, y, M, N, K, x_zero, y_zero,
                             mode, qmin, qmax);
}

extern "C" __global__ void int8_gemm_s8(const signed char* x, const signed char* w,
                                        const int* bias, const float* multiplier, const int* m0,
                                        const int* left, const int* right, void* y, int M, int N,
                                        int K, int x_zero, int y_zero, int mode, int qmin,
                                        int qmax) {
    int8_gemm<signed char>(x, w, bias, multiplier, m0, left, right, y, M, N, K, x_zero, y_zero,
                           mode, qmin, qmax);
}
