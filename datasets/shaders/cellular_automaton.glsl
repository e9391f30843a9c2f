// An elementary cellular automaton (Wolfram 1983): a random rule and random first row, one row per line.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    float cells = floor(16.0 + 48.0 * iParams[0].x);
    float rules[6] = float[6](30.0, 90.0, 110.0, 150.0, 45.0, 73.0);
    float rule = rules[int(iParams[0].y * 5.999)];
    vec2 uv = fragCoord / iResolution.xy;
    int x = int(uv.x * cells);
    int y = int((1.0 - uv.y) * cells);
    int width = int(cells);
    // simulate the light cone of cell (x, y): cells x - y .. x + y of row 0, then y steps
    int row[130];
    for (int i = 0; i < 130; i++) {
        int cx = x - y + i;
        int wrapped = int(mod(float(cx), float(width)));
        row[i] = (i <= 2 * y) ? int(step(0.5, kd_hash11(float(wrapped) + iTime * 17.0))) : 0;
    }
    for (int step_ = 0; step_ < 64; step_++) {
        if (step_ >= y) break;
        for (int i = 0; i < 128; i++) {
            if (i > 2 * (y - step_) - 2) break;
            int pattern = row[i] * 4 + row[i + 1] * 2 + row[i + 2];
            row[i] = int(mod(floor(rule / pow(2.0, float(pattern))), 2.0));
        }
    }
    float alive = float(row[0]);
    vec3 col = mix(kd_palette(0.1) * 0.2, kd_palette(0.5 + 0.5 * iParams[0].z), alive);
    fragColor = vec4(col, 1.0);
}
