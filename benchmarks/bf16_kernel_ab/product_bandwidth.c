// Bandwidth of bf16 products (rows x columns, 24 copies so every product reads its weights from
// memory, as a routed expert does) through two versions of sy_rows_bf16_f32, A_rows and B_rows,
// alternated 20 times per token count; the best of each is printed. Rows are split between the
// threads in items of 256, as Kernels' RowItems does. Usage: product_bandwidth THREADS ROWS COLUMNS.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <sys/mman.h>
#include <time.h>
#include <stdint.h>
typedef void (*rows_fn)(const void *rows, long row_bytes, int nrows, int blocks, const float *x, int stride, int tokens, float *out,
                        long out_stride);
void A_rows(const void *, long, int, int, const float *, int, int, float *, long);
void B_rows(const void *, long, int, int, const float *, int, int, float *, long);
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define COPIES 24
static int ROWS=3584, COLS=1024;
static uint16_t *W; static float X[8*8192]; static float OUT[2][8*8192];
static pthread_barrier_t bar; static rows_fn fn; static int TOK; static volatile int stop;
static int nth;
static void pass(int tid){ int per=ROWS/nth; int r0=tid*per;
  for(int c=0;c<COPIES;c++){
    for(int r=r0;r<r0+per;r+=256){int n=r0+per-r<256?r0+per-r:256;
      fn((char*)W+((size_t)c*ROWS+r)*COLS*2, COLS*2, n, COLS/32, X, COLS, TOK, OUT[tid]+r, ROWS);}
    pthread_barrier_wait(&bar);} }
static void* worker(void*a){ for(;;){ pthread_barrier_wait(&bar); if(stop) return 0; pass(1);} }
int main(int argc,char**argv){
  nth=atoi(argv[1]); if(argc>3){ROWS=atoi(argv[2]);COLS=atoi(argv[3]);}
  if(nth<1||nth>2||ROWS>8192||COLS>8192||COLS%32){fprintf(stderr,"threads 1-2, rows and columns up to 8192, columns a multiple of 32\n");return 1;}
  size_t bytes=(size_t)COPIES*ROWS*COLS*2;
  W=aligned_alloc(2<<20,bytes); madvise(W,bytes,MADV_HUGEPAGE);
  for(size_t i=0;i<bytes/2;i++) W[i]=0x3C00|(i*2654435761u>>25&127);
  for(int i=0;i<8*8192;i++) X[i]=(i%7)*0.125f-0.375f;
  pthread_barrier_init(&bar,0,nth); pthread_t th; if(nth>1) pthread_create(&th,0,worker,0);
  double best[2][7]; for(int v=0;v<2;v++)for(int t=0;t<7;t++)best[v][t]=1e9;
  for(int rep=0;rep<20;rep++) for(int t=1;t<=6;t++) for(int v=0;v<2;v++){
    fn=v?B_rows:A_rows; TOK=t; double t0=now();
    if(nth>1) pthread_barrier_wait(&bar); pass(0);
    double dt=now()-t0; if(dt<best[v][t])best[v][t]=dt; }
  for(int v=0;v<2;v++){ printf("%s:",v?"B":"A"); for(int t=1;t<=6;t++) printf(" %5.1f",bytes/best[v][t]/1e9); printf(" GB/s (tokens 1..6)\n");}
}
