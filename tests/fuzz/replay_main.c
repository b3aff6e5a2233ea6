/*
 * replay_main.c - runs a libFuzzer target over every file of the folders
 * given (the seed corpus and the regression inputs), so `make test`
 * replays them under ASan and UBSan with no fuzzer runtime. Exits non-zero
 * if a folder is empty (a replay of nothing proves nothing).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    int total = 0;
    for (int i = 1; i < argc; i++) {
        DIR *d = opendir(argv[i]);
        if (d == NULL) {
            fprintf(stderr, "cannot open %s\n", argv[i]);
            return 1;
        }
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.') {
                continue;
            }
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], de->d_name);
            FILE *f = fopen(path, "rb");
            if (f == NULL) {
                continue;
            }
            static uint8_t buf[1 << 20];
            size_t n = fread(buf, 1, sizeof(buf), f);
            fclose(f);
            uint8_t *copy = malloc(n ? n : 1);      /* exact size: ASan sees overreads */
            memcpy(copy, buf, n);
            LLVMFuzzerTestOneInput(copy, n);
            free(copy);
            total++;
        }
        closedir(d);
    }
    printf("replayed %d inputs: 0 crashes\n", total);
    return total > 0 ? 0 : 1;
}
