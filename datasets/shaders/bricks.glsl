// Running-bond brickwork: offset rows of bricks with per-brick colour noise and mortar lines.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y * (3.0 + 8.0 * iParams[0].x) * vec2(1.0, 2.0 + 1.5 * iParams[0].y);
    uv += iMouse.xy;
    float row = floor(uv.y);
    uv.x += mod(row, 2.0) * 0.5;
    vec2 id = floor(uv);
    vec2 f = fract(uv);
    float mortar = 0.04 + 0.08 * iParams[0].z;
    float m = step(mortar, f.x) * step(mortar * 1.5, f.y);
    vec3 brick = kd_palette(0.05 + 0.15 * kd_hash21(id + iTime)) * (0.7 + 0.3 * kd_noise(uv * 8.0));
    vec3 grout = vec3(0.75 + 0.2 * iParams[0].w);
    fragColor = vec4(mix(grout, brick, m), 1.0);
}
